"""Group commit for submissions: attempts that arrive together are claimed, recorded and announced in
one transaction.

Each submission still gets an atomic single-use claim (one conditional ``UPDATE ... RETURNING`` covers
the whole batch), and is acknowledged only after its transaction commits. What changes is the cost:
one commit (one fsync on SQLite) and a handful of statements per batch instead of per submission. At
low load a batch is one submission and nothing waits; under load, submissions arriving while a commit
is in flight form the next batch.

The retry policy (cooldown, daily limit) is checked here, inside the transaction that records the
attempt, against the failures committed so far: checks made earlier (at create) can race, this one
cannot on one database (see :func:`app.domain.unlock_rules.may_record_attempt` for the time it uses).
The queue is bounded (more waiting submissions get ``UNAVAILABLE`` at once); each attempt is encoded
and checked before it joins a batch, and a batch that fails for any reason but a database outage is
retried member by member, so one bad value from a plugin fails only its own submission, typed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Self

import msgspec
import structlog

from app.db.engine import Database
from app.db.errors import DatabaseUnavailable, is_database_outage
from app.db.key_store import AttemptRow, KeyStatus, KeyStore, seal_attempt
from app.db.outbox_store import OutboxStore, new_envelope
from app.domain.audit_chain import AuditActor
from app.domain.contract import AnswerInput
from app.domain.events import EventType, QuizCompleted
from app.domain.quiz import IssuedQuiz
from app.domain.scoring import QuestionOutcome, Verdict
from app.domain.unlock_rules import (
    WINDOW,
    RecordRefusal,
    RetryPolicy,
    UnlockDecision,
    decide_after_attempt,
    may_record_attempt,
)
from app.errors import ErrorCode, ServiceError
from app.services.audit import AuditLog
from app.services.limits import cooling_down

__all__ = ["AttemptWriter", "PendingAttempt"]

log = structlog.get_logger(__name__)
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
    request_digest: str | None = None
    """HMAC of the submission, stored so an identical resubmission gets this attempt back."""


_PARTICIPANT_LEFT = "A participant of this quiz has left Connection Key."


def _replayed() -> ServiceError:
    return ServiceError(ErrorCode.PAYLOAD_REPLAYED, "This quiz has already been submitted.")


def _spent() -> ServiceError:
    return ServiceError(
        ErrorCode.CONFLICT, "This quiz can no longer be answered under the retry policy; start a new quiz."
    )


class InvalidAttempt(ValueError):
    """A scored attempt that cannot be stored as it is (a plugin's non-finite score, unencodable criteria)."""


class _Encoded(msgspec.Struct, frozen=True):
    """An attempt's JSON columns, encoded (and so checked) before it joins a batch."""

    responses: str
    breakdown: str
    shadow_breakdown: str
    experiments: str
    feedback: str


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def encode_attempt(pending: PendingAttempt) -> _Encoded:
    """Encode the attempt's JSON columns, refusing values no database column should hold: a score or a
    criterion that is not a finite number (msgspec would write NaN as ``null``), criteria that are not a
    string-keyed mapping, anything msgspec cannot encode. Raises :class:`InvalidAttempt`."""
    verdict = pending.verdict
    for outcome in (*verdict.breakdown, *pending.shadow):
        criteria = outcome.criteria
        if not _finite(outcome.score) or (
            criteria is not None
            and (
                not isinstance(criteria, dict)
                or not all(isinstance(k, str) and _finite(v) for k, v in criteria.items())
            )
        ):
            raise InvalidAttempt(f"scorer {outcome.scorer!r} gave a value that cannot be stored")
    if not _finite(verdict.score):
        raise InvalidAttempt("the attempt's score is not a finite number")
    try:
        return _Encoded(
            responses=_json.encode(pending.answers).decode(),
            breakdown=_json.encode(verdict.breakdown).decode(),
            shadow_breakdown=_json.encode(pending.shadow).decode(),
            experiments=_json.encode(pending.variants).decode(),
            feedback=_json.encode(verdict.feedback).decode(),
        )
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidAttempt(f"the attempt cannot be encoded: {type(exc).__name__}") from None


class _Waiting(msgspec.Struct):
    pending: PendingAttempt
    encoded: _Encoded
    future: asyncio.Future[UnlockDecision]


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
        max_waiting: int | None = None,
    ) -> None:
        """``max_waiting``: submissions that may wait for the writer (default: ``[database]
        max_pending_writes``); one more is refused with ``UNAVAILABLE`` at once."""
        self._db = db
        self._keys = keys
        self._outbox = outbox
        self._policy = policy
        self._clock = clock
        self._on_events_written = on_events_written
        self._max_batch = max_batch
        self._audit = audit
        self._max_waiting = max_waiting or db.settings.max_pending_writes
        self._retry_after = db.settings.busy_retry_after_seconds
        self._waiting: list[_Waiting] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Let the batch in flight (and anything queued behind it) commit before the database closes.
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher

    @property
    def waiting(self) -> int:
        """Submissions queued for the next batches (the one committing is not counted)."""
        return len(self._waiting)

    def _unavailable(self, message: str) -> ServiceError:
        return ServiceError(ErrorCode.UNAVAILABLE, message, retryAfter=self._retry_after)

    async def write(self, pending: PendingAttempt) -> UnlockDecision:
        """Claim the key, store the attempt and its QUIZ_COMPLETED event; raises PAYLOAD_REPLAYED or
        CONFLICT when the key was already submitted or superseded, RATE_LIMITED (with the true wait) when
        the retry policy refuses the attempt for now, CONFLICT (and the key closed) when it refuses it for
        good while a new quiz may start at once (nothing recorded either way), UNAVAILABLE when the queue
        is full, the database is away or the attempt holds a value that cannot be stored (nothing recorded)."""
        if len(self._waiting) >= self._max_waiting:
            raise self._unavailable("Submissions are queued up; try again shortly.")
        try:
            encoded = encode_attempt(pending)
        except InvalidAttempt as exc:
            log.error("attempt cannot be stored", key_id=str(pending.quiz.key_id), reason=str(exc))
            raise self._unavailable("This submission could not be recorded right now; try again.") from None
        future: asyncio.Future[UnlockDecision] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(pending, encoded, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_all(), name="attempt-writer")
        return await asyncio.shield(future)

    def _failure(self, exc: Exception) -> Exception:
        if isinstance(exc, ServiceError):
            return exc
        if is_database_outage(exc):
            return DatabaseUnavailable(retry_after=self._retry_after)
        return self._unavailable("This submission could not be recorded right now; try again.")

    async def _flush_all(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
            try:
                outcomes = await self._commit(batch)
            except Exception as exc:  # every caller gets a typed failure below
                if len(batch) > 1 and not is_database_outage(exc):
                    # Something in one attempt broke the batch: find it by committing them one by one.
                    log.warning(
                        "attempt batch failed; committing one by one", size=len(batch), error=type(exc).__name__
                    )
                    outcomes = [await self._commit_alone(entry) for entry in batch]
                else:
                    if not is_database_outage(exc):
                        log.error("attempt could not be recorded", error=type(exc).__name__, exc_info=exc)
                    outcomes = [self._failure(exc)] * len(batch)
            if any(not isinstance(outcome, BaseException) for outcome in outcomes):
                self._on_events_written()
            for entry, outcome in zip(batch, outcomes, strict=True):
                if entry.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    entry.future.set_exception(outcome)
                else:
                    entry.future.set_result(outcome)

    async def _commit_alone(self, entry: _Waiting) -> UnlockDecision | Exception:
        try:
            [outcome] = await self._commit([entry])
        except Exception as exc:  # only this attempt fails, typed
            if not is_database_outage(exc):
                log.error("attempt could not be recorded", key_id=str(entry.pending.quiz.key_id), exc_info=exc)
            return self._failure(exc)
        return outcome

    async def _commit(self, batch: list[_Waiting]) -> list[UnlockDecision | Exception]:
        now = self._clock()
        # Keys are read (in one query) before the transaction; a participant erased since the submission
        # was accepted gets a typed refusal, and the rest of the batch goes ahead.
        keyring = await self._keys.encryption.keyring(
            {user for e in batch for user in (e.pending.quiz.requester_id, e.pending.quiz.target_id)}, create=True
        )
        refused: dict[int, Exception] = {}
        first_for_key: dict[uuid.UUID, int] = {}
        for index, entry in enumerate(batch):
            quiz = entry.pending.quiz
            if keyring.is_destroyed(quiz.requester_id) or keyring.is_destroyed(quiz.target_id):
                refused[index] = ServiceError(ErrorCode.NOT_FOUND, _PARTICIPANT_LEFT)
                continue
            first_for_key.setdefault(quiz.key_id, index)
        async with self._db.transaction():
            # Only keys still open take part in the policy: a superseded key's attempt in the same batch
            # must not count against the pair's open one.
            current = await self._keys.statuses(list(first_for_key)) if first_for_key else {}
            candidates = {key: i for key, i in first_for_key.items() if current.get(key) == KeyStatus.ISSUED}
            # The policy, against every failure committed so far (this transaction's view).
            quizzes = [batch[i].pending.quiz for i in candidates.values()]
            pairs = {(quiz.requester_id, quiz.conversation_id) for quiz in quizzes}
            since = min((quiz.issued_at for quiz in quizzes), default=now) - WINDOW
            history = await self._keys.recent_failures_many(pairs, since) if pairs else {}
            allowed: list[uuid.UUID] = []
            held_back: dict[uuid.UUID, RecordRefusal] = {}
            for key, index in candidates.items():
                pending = batch[index].pending
                failures = history.setdefault((pending.quiz.requester_id, pending.quiz.conversation_id), [])
                refusal = may_record_attempt(failures, pending.quiz.issued_at, now, self._policy)
                if refusal is not None:
                    held_back[key] = refusal
                    continue
                allowed.append(key)
                if not pending.verdict.passed:
                    failures.append(now)  # counts for a later attempt of the pair in this batch
            # A refusal that waiting cannot lift closes its key here, in this transaction: the client is
            # told to start a new quiz instead of being asked to come back, again and again, for a key that
            # can never be recorded. By id, so a newer key of the pair stays open.
            spent = await self._keys.supersede_keys([key for key, refusal in held_back.items() if refusal.final])
            claimed = await self._keys.claim_many(allowed, now)
            # Another instance claimed (or closed) these keys meanwhile: their status now says why.
            raced = [key for key in allowed if key not in claimed]
            raced += [key for key, refusal in held_back.items() if refusal.final and key not in spent]
            if raced:
                current.update(await self._keys.statuses(raced))
            winners = [batch[i] for key, i in first_for_key.items() if key in claimed]
            decisions: dict[uuid.UUID, UnlockDecision] = {}
            rows, events = [], []
            for entry in winners:
                pending = entry.pending
                quiz, verdict = pending.quiz, pending.verdict
                failures = history.get((quiz.requester_id, quiz.conversation_id), [])
                decision = decide_after_attempt(verdict.passed, failures, now, self._policy)
                decisions[quiz.key_id] = decision
                rows.append(seal_attempt(keyring, self._row(pending, entry.encoded, decision, now)))
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
            if rows:
                await self._keys.insert_attempts(rows)
                await self._outbox.append(events)
                await self._audit_moderated([entry.pending for entry in winners])
        outcomes: list[UnlockDecision | Exception] = []
        for index, entry in enumerate(batch):
            key = entry.pending.quiz.key_id
            if index in refused:
                outcomes.append(refused[index])
            elif first_for_key[key] != index:
                outcomes.append(_replayed())  # the same payload twice in one batch: the first one counts
            elif key in decisions:
                outcomes.append(decisions[key])
            elif key in spent:
                outcomes.append(_spent())  # nothing recorded, the key is closed
            elif key in held_back and not held_back[key].final:
                outcomes.append(cooling_down(held_back[key].retry_at, now))  # nothing recorded, the key stays open
            else:
                outcomes.append(_lost(current.get(key)))
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
    def _row(pending: PendingAttempt, encoded: _Encoded, decision: UnlockDecision, now: datetime) -> AttemptRow:
        quiz, verdict = pending.quiz, pending.verdict
        elapsed = [a.elapsed_ms for a in pending.answers if a.elapsed_ms is not None]
        return AttemptRow(
            id=pending.attempt_id,
            connection_key_id=quiz.key_id,
            conversation_id=quiz.conversation_id,
            requester_id=quiz.requester_id,
            target_id=quiz.target_id,
            responses=encoded.responses,
            total_elapsed_ms=sum(elapsed) if elapsed else None,
            score=verdict.score,
            passed=verdict.passed,
            breakdown=encoded.breakdown,
            shadow_breakdown=encoded.shadow_breakdown,
            experiments=encoded.experiments,
            feedback=encoded.feedback,
            unlock_state=decision.state.value,
            retry_available_at=decision.retry_available_at,
            started_at=quiz.issued_at,
            submitted_at=now,
            submitted_by=pending.submitted_by,
            request_digest=pending.request_digest,
        )
