"""Connection keys, their questions and attempts."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import msgspec

from app.db.bulk_insert import insert_rows
from app.db.tables import ConnectionKey, ConnectionKeyAttempt, ConnectionKeyQuestion
from app.domain.quiz import GeneratedQuestion, IssuedQuiz, QuestionKind

__all__ = ["AttemptRow", "KeyStatus", "KeyStore"]

_choices = msgspec.json.Decoder(list[str] | None)


class KeyStatus:
    """Lifecycle of a key row: ISSUED until submitted once, or superseded by a newer key."""

    ISSUED = "ISSUED"
    SUBMITTED = "SUBMITTED"
    SUPERSEDED = "SUPERSEDED"


class AttemptRow(msgspec.Struct, frozen=True):
    """Everything an attempt row holds; JSON fields are already encoded text."""

    id: uuid.UUID
    connection_key_id: uuid.UUID
    conversation_id: uuid.UUID
    requester_id: uuid.UUID
    target_id: uuid.UUID
    responses: str
    total_elapsed_ms: int | None
    score: float
    passed: bool
    breakdown: str
    shadow_breakdown: str
    experiments: str
    feedback: str
    unlock_state: str
    retry_available_at: datetime | None
    started_at: datetime
    submitted_at: datetime


def _question(row: dict[str, Any]) -> GeneratedQuestion:
    return GeneratedQuestion(
        id=row["id"],
        position=row["position"],
        kind=QuestionKind(row["kind"]),
        prompt=row["prompt"],
        choices=_choices.decode(row["choices"]) if row["choices"] is not None else None,
        answer_key=row["answer_key"],
        template_key=row["template_key"],
        variant=row["variant"],
        difficulty=row["difficulty"],
        topic=row["topic"],
        references=_choices.decode(row["reference_texts"]) if row["reference_texts"] is not None else None,
    )


class KeyStore:
    """Reads and writes keys, questions and attempts. Writers expect to run inside a transaction."""

    async def supersede_open_keys(self, requester_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        """A new quiz replaces any unsubmitted one, so a requester cannot collect quizzes and answer the easiest."""
        await (
            ConnectionKey.update({ConnectionKey.status: KeyStatus.SUPERSEDED})
            .where(
                (ConnectionKey.requester_id == requester_id)
                & (ConnectionKey.conversation_id == conversation_id)
                & (ConnectionKey.status == KeyStatus.ISSUED)
            )
            .run()
        )

    async def insert_quiz(self, quiz: IssuedQuiz, signing_key_id: str) -> None:
        await ConnectionKey.insert(
            ConnectionKey(
                id=quiz.key_id,
                conversation_id=quiz.conversation_id,
                requester_id=quiz.requester_id,
                target_id=quiz.target_id,
                status=KeyStatus.ISSUED,
                signing_key_id=signing_key_id,
                signed_payload=quiz.signed_payload,
                difficulty=quiz.difficulty,
                issued_at=quiz.issued_at,
                expires_at=quiz.expires_at,
            )
        ).run()
        await ConnectionKeyQuestion.insert(
            *(
                ConnectionKeyQuestion(
                    id=q.id,
                    connection_key_id=quiz.key_id,
                    position=q.position,
                    kind=q.kind.value,
                    prompt=q.prompt,
                    choices=msgspec.json.encode(q.choices).decode() if q.choices is not None else None,
                    answer_key=q.answer_key,
                    topic=q.topic,
                    reference_texts=msgspec.json.encode(q.references).decode() if q.references is not None else None,
                    template_key=q.template_key,
                    variant=q.variant,
                    difficulty=q.difficulty,
                )
                for q in quiz.questions
            )
        ).run()

    async def get_quiz(self, key_id: uuid.UUID, target_name: str | None = None) -> tuple[IssuedQuiz, str] | None:
        """The quiz and its status, or ``None``."""
        row = await ConnectionKey.select().where(ConnectionKey.id == key_id).first().run()
        if row is None:
            return None
        questions = (
            await ConnectionKeyQuestion.select()
            .where(ConnectionKeyQuestion.connection_key_id == key_id)
            .order_by(ConnectionKeyQuestion.position)
            .run()
        )
        quiz = IssuedQuiz(
            key_id=row["id"],
            conversation_id=row["conversation_id"],
            requester_id=row["requester_id"],
            target_id=row["target_id"],
            target_name=target_name or "",
            difficulty=row["difficulty"],
            questions=[_question(q) for q in questions],
            signed_payload=row["signed_payload"],
            issued_at=row["issued_at"],
            expires_at=row["expires_at"],
        )
        return quiz, row["status"]

    async def claim_many(self, key_ids: Sequence[uuid.UUID], now: datetime) -> set[uuid.UUID]:
        """Atomically move each ISSUED key to SUBMITTED in one statement; returns the ids this call
        claimed (a key submitted or superseded before is not among them)."""
        if not key_ids:
            return set()
        rows = (
            await ConnectionKey.update({ConnectionKey.status: KeyStatus.SUBMITTED, ConnectionKey.submitted_at: now})
            .where(ConnectionKey.id.is_in(list(key_ids)) & (ConnectionKey.status == KeyStatus.ISSUED))
            .returning(ConnectionKey.id)
            .run()
        )
        return {row["id"] for row in rows}

    async def statuses(self, key_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
        """Current status of each existing key among ``key_ids``."""
        if not key_ids:
            return {}
        rows = (
            await ConnectionKey.select(ConnectionKey.id, ConnectionKey.status)
            .where(ConnectionKey.id.is_in(list(key_ids)))
            .run()
        )
        return {row["id"]: row["status"] for row in rows}

    async def recent_failures_many(
        self, pairs: Collection[tuple[uuid.UUID, uuid.UUID]], since: datetime
    ) -> dict[tuple[uuid.UUID, uuid.UUID], list[datetime]]:
        """:meth:`recent_failures` for several (requester, conversation) pairs in one query."""
        found: dict[tuple[uuid.UUID, uuid.UUID], list[datetime]] = {pair: [] for pair in pairs}
        if not pairs:
            return found
        rows = (
            await ConnectionKeyAttempt.select(
                ConnectionKeyAttempt.requester_id,
                ConnectionKeyAttempt.conversation_id,
                ConnectionKeyAttempt.submitted_at,
            )
            .where(
                ConnectionKeyAttempt.requester_id.is_in(list({requester for requester, _ in pairs}))
                & (ConnectionKeyAttempt.passed == False)  # noqa: E712 - Piccolo operator
                & (ConnectionKeyAttempt.submitted_at > since)
            )
            .run()
        )
        for row in rows:
            pair = (row["requester_id"], row["conversation_id"])
            if pair in found:
                found[pair].append(row["submitted_at"])
        return found

    async def open_keys(self, requester_id: uuid.UUID, now: datetime) -> list[uuid.UUID]:
        """Ids of the requester's keys that can still be submitted, newest first."""
        rows = (
            await ConnectionKey.select(ConnectionKey.id)
            .where(
                (ConnectionKey.requester_id == requester_id)
                & (ConnectionKey.status == KeyStatus.ISSUED)
                & (ConnectionKey.expires_at > now)
            )
            .order_by(ConnectionKey.issued_at, ascending=False)
            .run()
        )
        return [row["id"] for row in rows]

    async def recent_failures(
        self, requester_id: uuid.UUID, conversation_id: uuid.UUID, since: datetime
    ) -> list[datetime]:
        """Submission times of the requester's failed attempts on the conversation since ``since``."""
        rows = (
            await ConnectionKeyAttempt.select(ConnectionKeyAttempt.submitted_at)
            .where(
                (ConnectionKeyAttempt.requester_id == requester_id)
                & (ConnectionKeyAttempt.conversation_id == conversation_id)
                & (ConnectionKeyAttempt.passed == False)  # noqa: E712 - Piccolo operator
                & (ConnectionKeyAttempt.submitted_at > since)
            )
            .run()
        )
        return [row["submitted_at"] for row in rows]

    async def insert_attempts(self, attempts: Sequence[AttemptRow]) -> None:
        """Insert attempt rows in one statement."""
        t = ConnectionKeyAttempt
        columns = [t._meta.get_column_by_name(name) for name in AttemptRow.__struct_fields__]
        await insert_rows(t, columns, [msgspec.structs.astuple(a) for a in attempts])
