"""Connection keys, their questions and attempts.

Questions quote the target's profile, so their texts are sealed with the target's data key; an
attempt's responses are the requester's, sealed with theirs; the attempt's feedback names the target
(target's key); in the breakdowns only each line's free-text ``feedback`` is sealed (requester's key),
so scores, scorers and flags stay queryable. ``connection_keys.signed_payload`` holds only ids and
times (see :mod:`app.domain.signing`), no PII, so it stays as it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from app.db.bulk_insert import insert_rows
from app.db.moderation_store import excused_attempt_ids
from app.db.tables import ConnectionKey, ConnectionKeyAttempt, ConnectionKeyQuestion
from app.domain.contract import AnswerInput
from app.domain.field_crypto import FieldRef, Keyring
from app.domain.quiz import GeneratedQuestion, IssuedQuiz, QuestionKind

if TYPE_CHECKING:
    from app.services.encryption import FieldEncryption

__all__ = [
    "ATTEMPT_TABLE",
    "OPEN_KEY_INDEX",
    "QUESTION_SEALED_COLUMNS",
    "QUESTION_TABLE",
    "AttemptRecord",
    "AttemptRow",
    "KeyRow",
    "KeyStatus",
    "KeyStore",
    "is_open_key_conflict",
    "open_attempt",
    "seal_attempt",
    "seal_breakdown",
    "sealed_question_values",
]

_choices = msgspec.json.Decoder(list[str] | None)
_answers = msgspec.json.Decoder(list[AnswerInput])
_lines = msgspec.json.Decoder(list[dict[str, Any]])
_strings = msgspec.json.Decoder(list[str])
_json = msgspec.json.Encoder()

QUESTION_TABLE = "connection_key_questions"
QUESTION_SEALED_COLUMNS = ("prompt", "choices", "answer_key", "topic", "reference_texts")
"""Columns of ``connection_key_questions`` sealed with the target's data key (record id: question id)."""
ATTEMPT_TABLE = "connection_key_attempts"
_BREAKDOWNS = ("breakdown", "shadow_breakdown")


class KeyStatus:
    """Lifecycle of a key row: ISSUED until submitted once, or superseded by a newer key."""

    ISSUED = "ISSUED"
    SUBMITTED = "SUBMITTED"
    SUPERSEDED = "SUPERSEDED"
    REVOKED = "REVOKED"
    """A participant was erased before it was submitted."""


OPEN_KEY_INDEX = "connection_keys_one_open_per_pair"


def is_open_key_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is the database refusing a second ISSUED key for one
    (requester, conversation)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "constraint_name", None) == OPEN_KEY_INDEX:  # asyncpg's UniqueViolationError
            return True
        if _SQLITE_OPEN_KEY_CONFLICT in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


_SQLITE_OPEN_KEY_CONFLICT = "UNIQUE constraint failed: connection_keys.requester_id, connection_keys.conversation_id"


class KeyRow(msgspec.Struct, frozen=True):
    """What the key row says about a payload, read in one query before anything expensive."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    requester_id: uuid.UUID
    target_id: uuid.UUID
    status: str
    issued_at: datetime
    expires_at: datetime


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
    submitted_by: uuid.UUID | None = None
    """The moderator who submitted for the requester, if one did."""
    request_digest: str | None = None
    """HMAC of the submission (see :meth:`app.domain.signing.PayloadSigner.request_digest`)."""


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt as read back, decrypted.

    Erased people's fields are ``None`` (``responses`` when the requester was erased, ``feedback`` when
    the target was), each breakdown line's ``feedback`` likewise, and ``erased`` names every field that
    became unreadable. Everything else (ids, scores, scorers, flags, times) stays readable.
    """

    id: uuid.UUID
    connection_key_id: uuid.UUID
    conversation_id: uuid.UUID
    requester_id: uuid.UUID
    target_id: uuid.UUID
    responses: list[AnswerInput] | None
    total_elapsed_ms: int | None
    score: float
    passed: bool
    breakdown: list[dict[str, Any]]
    shadow_breakdown: list[dict[str, Any]]
    feedback: list[str] | None
    unlock_state: str
    retry_available_at: datetime | None
    started_at: datetime
    submitted_at: datetime
    erased: list[str] = msgspec.field(default_factory=list)
    submitted_by: uuid.UUID | None = None
    request_digest: str | None = None


def _question(row: dict[str, Any], owner: uuid.UUID, keyring: Keyring) -> GeneratedQuestion:
    plain = keyring.open_columns(owner, QUESTION_TABLE, row["id"], {c: row[c] for c in QUESTION_SEALED_COLUMNS})
    return GeneratedQuestion(
        id=row["id"],
        position=row["position"],
        kind=QuestionKind(row["kind"]),
        prompt=plain["prompt"] or "",
        choices=_choices.decode(plain["choices"]) if plain["choices"] is not None else None,
        answer_key=plain["answer_key"],
        template_key=row["template_key"],
        variant=row["variant"],
        difficulty=row["difficulty"],
        topic=plain["topic"],
        references=_choices.decode(plain["reference_texts"]) if plain["reference_texts"] is not None else None,
    )


def sealed_question_values(question: GeneratedQuestion, owner: uuid.UUID, keyring: Keyring) -> dict[str, str | None]:
    """The sealed columns of a question row (owner: the quiz's target)."""
    return keyring.seal_columns(
        owner,
        QUESTION_TABLE,
        question.id,
        {
            "prompt": question.prompt,
            "choices": _json.encode(question.choices).decode() if question.choices is not None else None,
            "answer_key": question.answer_key,
            "topic": question.topic,
            "reference_texts": _json.encode(question.references).decode() if question.references is not None else None,
        },
    )


def breakdown_feedback_ref(attempt_id: uuid.UUID, column: str, index: int, line: dict[str, Any]) -> FieldRef:
    """Where one breakdown line's feedback lives: the column, the line's position and question, so feedback
    moved to another line (or another attempt) does not decrypt."""
    return FieldRef(ATTEMPT_TABLE, f"{column}.feedback.{index}.{line.get('question_id')}", attempt_id)


def seal_breakdown(keyring: Keyring, owner: uuid.UUID, attempt_id: uuid.UUID, column: str, lines: str) -> str:
    """Seal the free-text ``feedback`` of each line of an encoded breakdown. The feedback is a writer's
    plaintext, always (a scorer's text shaped like a token is sealed as it is, never opened)."""
    decoded = _lines.decode(lines)
    for index, line in enumerate(decoded):
        if line.get("feedback") is not None:
            ref = breakdown_feedback_ref(attempt_id, column, index, line)
            line["feedback"] = keyring.seal(owner, ref, line["feedback"])
    return _json.encode(decoded).decode()


def _open_breakdown(
    keyring: Keyring, owner: uuid.UUID, attempt_id: uuid.UUID, column: str, lines: str
) -> tuple[list[dict[str, Any]], bool]:
    decoded, erased = _lines.decode(lines), False
    for index, line in enumerate(decoded):
        if line.get("feedback") is not None:
            if keyring.is_destroyed(owner):
                line["feedback"], erased = None, True
            else:
                ref = breakdown_feedback_ref(attempt_id, column, index, line)
                line["feedback"] = keyring.open(owner, ref, line["feedback"])
    return decoded, erased


def seal_attempt(keyring: Keyring, row: AttemptRow) -> AttemptRow:
    """Seal a new attempt row's PII: responses and breakdown feedback (requester's key), feedback
    (target's key). ``row`` holds the writer's plaintext (re-sealing stored values is the rotation's job,
    :mod:`app.services.key_rotation`)."""
    requester, target = row.requester_id, row.target_id
    return msgspec.structs.replace(
        row,
        responses=keyring.seal(requester, FieldRef(ATTEMPT_TABLE, "responses", row.id), row.responses),
        feedback=keyring.seal(target, FieldRef(ATTEMPT_TABLE, "feedback", row.id), row.feedback),
        breakdown=seal_breakdown(keyring, requester, row.id, "breakdown", row.breakdown),
        shadow_breakdown=seal_breakdown(keyring, requester, row.id, "shadow_breakdown", row.shadow_breakdown),
    )


def open_attempt(row: dict[str, Any], keyring: Keyring) -> AttemptRecord:
    """Decrypt a ``connection_key_attempts`` row (``keyring`` holds its requester's and target's keys);
    an erased person's fields become ``None`` and are listed in ``erased``."""
    attempt_id = uuid.UUID(str(row["id"]))
    requester, target = uuid.UUID(str(row["requester_id"])), uuid.UUID(str(row["target_id"]))
    erased: list[str] = []
    responses: list[AnswerInput] | None = None
    if keyring.is_destroyed(requester):
        erased.append("responses")
    else:
        ref = FieldRef(ATTEMPT_TABLE, "responses", attempt_id)
        responses = _answers.decode(keyring.open(requester, ref, row["responses"]))
    feedback: list[str] | None = None
    if keyring.is_destroyed(target):
        erased.append("feedback")
    else:
        ref = FieldRef(ATTEMPT_TABLE, "feedback", attempt_id)
        feedback = _strings.decode(keyring.open(target, ref, row["feedback"]))
    breakdowns = {}
    for column in _BREAKDOWNS:
        raw = row[column]
        text = raw if isinstance(raw, str) else _json.encode(raw).decode()
        breakdowns[column], lost = _open_breakdown(keyring, requester, attempt_id, column, text)
        if lost:
            erased.append(f"{column}.feedback")
    return AttemptRecord(
        id=attempt_id,
        connection_key_id=row["connection_key_id"],
        conversation_id=row["conversation_id"],
        requester_id=requester,
        target_id=target,
        responses=responses,
        total_elapsed_ms=row["total_elapsed_ms"],
        score=row["score"],
        passed=row["passed"],
        breakdown=breakdowns["breakdown"],
        shadow_breakdown=breakdowns["shadow_breakdown"],
        feedback=feedback,
        unlock_state=row["unlock_state"],
        retry_available_at=row["retry_available_at"],
        started_at=row["started_at"],
        submitted_at=row["submitted_at"],
        erased=erased,
        submitted_by=row.get("submitted_by"),
        request_digest=row.get("request_digest"),
    )


class KeyStore:
    """Reads and writes keys, questions and attempts. Writers expect to run inside a transaction."""

    def __init__(self, encryption: FieldEncryption) -> None:
        self.encryption = encryption

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

    async def insert_quiz(self, quiz: IssuedQuiz, signing_key_id: str, keyring: Keyring) -> None:
        """Insert the key and its questions, sealed with the target's key from ``keyring``."""
        sealed = {q.id: sealed_question_values(q, quiz.target_id, keyring) for q in quiz.questions}
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
                    prompt=sealed[q.id]["prompt"],
                    choices=sealed[q.id]["choices"],
                    answer_key=sealed[q.id]["answer_key"],
                    topic=sealed[q.id]["topic"],
                    reference_texts=sealed[q.id]["reference_texts"],
                    template_key=q.template_key,
                    variant=q.variant,
                    difficulty=q.difficulty,
                )
                for q in quiz.questions
            )
        ).run()

    async def key_row(self, key_id: uuid.UUID) -> KeyRow | None:
        """The key's row (status, participants, times), or ``None``: one indexed read, no decryption."""
        t = ConnectionKey
        row = await (
            t.select(t.id, t.conversation_id, t.requester_id, t.target_id, t.status, t.issued_at, t.expires_at)
            .where(t.id == key_id)
            .first()
            .run()
        )
        if row is None:
            return None
        ids = {c: uuid.UUID(str(row[c])) for c in ("id", "conversation_id", "requester_id", "target_id")}
        return KeyRow(**ids, status=row["status"], issued_at=row["issued_at"], expires_at=row["expires_at"])

    async def attempt_for_key(self, key_id: uuid.UUID) -> AttemptRecord | None:
        """The attempt recorded for a key (there is at most one), decrypted, or ``None``."""
        t = ConnectionKeyAttempt
        row = await t.select(t.id).where(t.connection_key_id == key_id).first().run()
        return None if row is None else await self.get_attempt(row["id"])

    async def get_quiz(self, key_id: uuid.UUID, target_name: str | None = None) -> tuple[IssuedQuiz, str] | None:
        """The quiz (decrypted) and its status, or ``None``. Raises
        :class:`app.domain.field_crypto.KeyDestroyedError` when the target was erased."""
        row = await ConnectionKey.select().where(ConnectionKey.id == key_id).first().run()
        if row is None:
            return None
        questions = (
            await ConnectionKeyQuestion.select()
            .where(ConnectionKeyQuestion.connection_key_id == key_id)
            .order_by(ConnectionKeyQuestion.position)
            .run()
        )
        target = row["target_id"]
        keyring = await self.encryption.keyring_covering(
            {target: [q[c] for q in questions for c in QUESTION_SEALED_COLUMNS]}
        )
        quiz = IssuedQuiz(
            key_id=row["id"],
            conversation_id=row["conversation_id"],
            requester_id=row["requester_id"],
            target_id=row["target_id"],
            target_name=target_name or "",
            difficulty=row["difficulty"],
            questions=[_question(q, row["target_id"], keyring) for q in questions],
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

    async def supersede_keys(self, key_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Close each still-ISSUED key of ``key_ids`` as SUPERSEDED (by id: never a newer key of the pair
        issued meanwhile); returns the ids this call closed."""
        if not key_ids:
            return set()
        rows = (
            await ConnectionKey.update({ConnectionKey.status: KeyStatus.SUPERSEDED})
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
                & ConnectionKeyAttempt.id.not_in(excused_attempt_ids())  # a moderator's ALLOW_RETRY
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
                & ConnectionKeyAttempt.id.not_in(excused_attempt_ids())  # a moderator's ALLOW_RETRY
            )
            .run()
        )
        return [row["submitted_at"] for row in rows]

    async def get_attempt(self, attempt_id: uuid.UUID) -> AttemptRecord | None:
        """One attempt, decrypted (erased people's fields ``None``, see :class:`AttemptRecord`)."""
        row = await ConnectionKeyAttempt.select().where(ConnectionKeyAttempt.id == attempt_id).first().run()
        if row is None:
            return None
        requester, target = uuid.UUID(str(row["requester_id"])), uuid.UUID(str(row["target_id"]))
        tokens: dict[uuid.UUID, list[str | None]] = {requester: [row["responses"]]}
        tokens.setdefault(target, []).append(row["feedback"])
        keyring = await self.encryption.keyring_covering(tokens)
        return open_attempt(row, keyring)

    async def revoke_open_keys(self, user_id: uuid.UUID) -> list[uuid.UUID]:
        """Mark every unsubmitted key the user asked for or is the target of REVOKED (erasure); their ids."""
        t = ConnectionKey
        rows = (
            await t.update({t.status: KeyStatus.REVOKED})
            .where(((t.requester_id == user_id) | (t.target_id == user_id)) & (t.status == KeyStatus.ISSUED))
            .returning(t.id)
            .run()
        )
        return [row["id"] for row in rows]

    async def insert_attempts(self, attempts: Sequence[AttemptRow]) -> None:
        """Insert attempt rows in one statement (sealed already: see :func:`seal_attempt`)."""
        t = ConnectionKeyAttempt
        columns = [t._meta.get_column_by_name(name) for name in AttemptRow.__struct_fields__]
        await insert_rows(t, columns, [msgspec.structs.astuple(a) for a in attempts])
