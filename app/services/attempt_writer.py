"""Group commit for submissions: attempts that arrive together are claimed, recorded and announced in
one transaction.

Each submission still gets an atomic single-use claim (one conditional ``UPDATE ... RETURNING`` covers
the whole batch), and is acknowledged only after its transaction commits. What changes is the cost:
one commit (one fsync on SQLite) and a handful of statements per batch instead of per submission. At
low load a batch is one submission and nothing waits; under load, submissions arriving while a commit
is in flight form the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Self

import msgspec

from app.db.engine import Database
from app.db.key_store import AttemptRow, KeyStatus, KeyStore, seal_attempt
from app.db.outbox_store import OutboxStore, new_envelope
from app.domain.audit_chain import AuditActor
from app.domain.contract import AnswerInput
from app.domain.events import EventType, QuizCompleted
from app.domain.quiz import IssuedQuiz
from app.domain.scoring import QuestionOutcome, Verdict
from app.domain.unlock_rules import WINDOW, RetryPolicy, UnlockDecision, decide_after_attempt
from app.errors import ErrorCode, ServiceError
from app.services.audit import AuditLog

__all__ = ["AttemptWriter", "PendingAttempt"]

_json = msgspec.json.Encoder()


class PendingAttempt(msgspec.Struct, frozen=True):
    """A scored submission waiting to be committed."""

    attempt_id: uuid.UUID
    quiz: IssuedQuiz
    verdict: Verdict
    answers: list[AnswerInput]
    shadow: list[QuestionOutcome] = msgspec.field(default_factory=list)
    variants: dict[str, str] = msgspec.field(default_factory=dict)
    submitted_by: uuid.UUID | None = None
    """A moderator submitting for the requester: stored on the attempt and audited with it."""


_PARTICIPANT_LEFT = "A participant of this quiz has left Connection Key."


def _replayed() -> ServiceError:
    return ServiceError(ErrorCode.PAYLOAD_REPLAYED, "This quiz has already been submitted.")


def _lost(status: str | None) -> ServiceError:
    if status == KeyStatus.SUPERSEDED:
        return ServiceError(ErrorCode.CONFLICT, "A newer quiz was issued; answer that one instead.")
    if status == KeyStatus.REVOKED:
        return ServiceError(ErrorCode.NOT_FOUND, _PARTICIPANT_LEFT)
    return _replayed()


class AttemptWriter:
    """Commits :class:`PendingAttempt` batches; :meth:`write` returns the unlock decision once committed."""

    def __init__(
        self,
        db: Database,
        keys: KeyStore,
        outbox: OutboxStore,
        policy: RetryPolicy,
        clock: Callable[[], datetime],
        on_events_written: Callable[[], None],
        max_batch: int = 256,
        audit: AuditLog | None = None,
    ) -> None:
        self._db = db
        self._keys = keys
        self._outbox = outbox
        self._policy = policy
        self._clock = clock
        self._on_events_written = on_events_written
        self._max_batch = max_batch
        self._audit = audit
        self._waiting: list[tuple[PendingAttempt, asyncio.Future[UnlockDecision]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Let the batch in flight (and anything queued behind it) commit before the database closes.
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher

    async def write(self, pending: PendingAttempt) -> UnlockDecision:
        """Claim the key, store the attempt and its QUIZ_COMPLETED event; raises PAYLOAD_REPLAYED or
        CONFLICT when the key was already submitted or superseded."""
        future: asyncio.Future[UnlockDecision] = asyncio.get_running_loop().create_future()
        self._waiting.append((pending, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all(), name="attempt-writer")
        return await asyncio.shield(future)

    async def _flush_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
            try:
                outcomes = await self._commit([pending for pending, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every caller in the batch gets the failure
                outcomes = [exc] * len(batch)
            else:
                self._on_events_written()
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def _commit(self, batch: list[PendingAttempt]) -> list[UnlockDecision | Exception]:
        now = self._clock()
        # Keys are read (in one query) before the transaction; a participant erased since the submission
        # was accepted gets a typed refusal, and the rest of the batch goes ahead.
        keyring = await self._keys.encryption.keyring(
            {user for p in batch for user in (p.quiz.requester_id, p.quiz.target_id)}, create=True
        )
        refused: dict[int, Exception] = {}
        first_for_key: dict[uuid.UUID, int] = {}
        for index, pending in enumerate(batch):
            if keyring.is_destroyed(pending.quiz.requester_id) or keyring.is_destroyed(pending.quiz.target_id):
                refused[index] = ServiceError(ErrorCode.NOT_FOUND, _PARTICIPANT_LEFT)
                continue
            first_for_key.setdefault(pending.quiz.key_id, index)
        async with self._db.transaction():
            claimed = await self._keys.claim_many(list(first_for_key), now)
            lost = [key for key in first_for_key if key not in claimed]
            statuses = await self._keys.statuses(lost) if lost else {}
            winners = [batch[i] for key, i in first_for_key.items() if key in claimed]
            failing = {(p.quiz.requester_id, p.quiz.conversation_id) for p in winners if not p.verdict.passed}
            history = await self._keys.recent_failures_many(failing, now - WINDOW) if failing else {}
            decisions: dict[uuid.UUID, UnlockDecision] = {}
            rows, events = [], []
            for pending in winners:
                quiz, verdict = pending.quiz, pending.verdict
                failures = history.get((quiz.requester_id, quiz.conversation_id), [])
                if not verdict.passed:
                    failures.append(now)
                decision = decide_after_attempt(verdict.passed, failures, now, self._policy)
                decisions[quiz.key_id] = decision
                rows.append(seal_attempt(keyring, self._row(pending, decision, now)))
                event = QuizCompleted(
                    attempt_id=pending.attempt_id,
                    key_id=quiz.key_id,
                    conversation_id=quiz.conversation_id,
                    requester_id=quiz.requester_id,
                    target_id=quiz.target_id,
                    score=verdict.score,
                    passed=verdict.passed,
                    unlock_state=decision.state,
                    retry_available_at=decision.retry_available_at,
                    completed_at=now,
                )
                events.append(new_envelope(EventType.QUIZ_COMPLETED, quiz.conversation_id, event, now))
            await self._keys.insert_attempts(rows)
            await self._outbox.append(events)
            await self._audit_moderated(winners)
        outcomes: list[UnlockDecision | Exception] = []
        for index, pending in enumerate(batch):
            key = pending.quiz.key_id
            if index in refused:
                outcomes.append(refused[index])
            elif first_for_key[key] != index:
                outcomes.append(_replayed())  # the same payload twice in one batch: the first one counts
            elif key in decisions:
                outcomes.append(decisions[key])
            else:
                outcomes.append(_lost(statuses.get(key)))
        return outcomes

    async def _audit_moderated(self, winners: list[PendingAttempt]) -> None:
        # In the batch's transaction: a moderator's submission and its audit entry commit together.
        for pending in winners:
            if pending.submitted_by is not None and self._audit is not None:
                await self._audit.record(
                    actor=AuditActor(kind="moderator", id=pending.submitted_by),
                    action="moderation.submitted",
                    subject_type="attempt",
                    subject_id=pending.attempt_id,
                    change={"keyId": str(pending.quiz.key_id), "requesterId": str(pending.quiz.requester_id)},
                )

    @staticmethod
    def _row(pending: PendingAttempt, decision: UnlockDecision, now: datetime) -> AttemptRow:
        quiz, verdict = pending.quiz, pending.verdict
        elapsed = [a.elapsed_ms for a in pending.answers if a.elapsed_ms is not None]
        return AttemptRow(
            id=pending.attempt_id,
            connection_key_id=quiz.key_id,
            conversation_id=quiz.conversation_id,
            requester_id=quiz.requester_id,
            target_id=quiz.target_id,
            responses=_json.encode(pending.answers).decode(),
            total_elapsed_ms=sum(elapsed) if elapsed else None,
            score=verdict.score,
            passed=verdict.passed,
            breakdown=_json.encode(verdict.breakdown).decode(),
            shadow_breakdown=_json.encode(pending.shadow).decode(),
            experiments=_json.encode(pending.variants).decode(),
            feedback=_json.encode(verdict.feedback).decode(),
            unlock_state=decision.state.value,
            retry_available_at=decision.retry_available_at,
            started_at=quiz.issued_at,
            submitted_at=now,
            submitted_by=pending.submitted_by,
        )
