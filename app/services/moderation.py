"""Use cases of the moderation API: list attempts, read one in full, override an outcome.

Every call is made by a verified moderator (the REST layer checks) and leaves an audit entry in the
transaction of what it did. An override moves the conversation through the same outbox and pub/sub as
the unlock orchestrator, so subscribers and push notifications see it like any other change.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any, NamedTuple

import msgspec
import structlog

from app.adapters.pubsub import PubSub
from app.auth import Principal
from app.db.engine import Database
from app.db.key_store import KeyStore
from app.db.moderation_store import AttemptFilter, DecisionRow, ModerationStore, open_reason, seal_reason
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.profile_store import ConversationRecord, ProfileStore
from app.domain.audit_chain import AuditActor
from app.domain.events import ConversationStatusChanged, EventType
from app.domain.field_crypto import KeyDestroyedError, Keyring, UserKeys, new_data_key
from app.domain.moderation_contract import (
    AttemptDetail,
    AttemptPage,
    AttemptSummary,
    DecisionView,
    OverrideInput,
    OverrideResult,
    ReviewAnswer,
    ReviewQuestion,
    ScoreLine,
)
from app.domain.moderation_rules import (
    DecisionRefused,
    OverrideDecision,
    OverrideOutcome,
    PageCursor,
    clean_reason,
    decide_override,
    encode_cursor,
)
from app.domain.quiz import UnlockState
from app.domain.requester_state import RequesterState, participant_view
from app.domain.scoring import QuestionOutcome
from app.domain.unlock_rules import WINDOW, RetryPolicy
from app.errors import ErrorCode, ServiceError
from app.services.audit import AuditLog
from app.services.unlock_orchestrator import status_channel
from app.settings import ModerationSettings, Settings

__all__ = ["ModerationService", "idempotency_id"]

log = structlog.get_logger(__name__)
_outcomes = msgspec.json.Decoder(list[QuestionOutcome])
_experiments = msgspec.json.Decoder(dict[str, str])
_STATE_EVENTS = {
    UnlockState.UNLOCKED: EventType.CONVERSATION_UNLOCKED,
    UnlockState.LOCKED: EventType.CONVERSATION_LOCKED,
    UnlockState.RETRY_AVAILABLE: EventType.RETRY_AVAILABLE,
    UnlockState.COOLDOWN: EventType.COOLDOWN_STARTED,
}
# A page scans at most this many batches for exact flag matches; past it the page comes back short,
# its cursor at the last row scanned, so no request scans the whole table.
_MAX_SCAN_BATCHES = 10


def idempotency_id(moderator_id: uuid.UUID, key: str) -> uuid.UUID:
    """The stored identity of an ``Idempotency-Key``: per moderator, so keys never collide across people."""
    return uuid.uuid5(moderator_id, key)


def _flags(outcomes: list[QuestionOutcome]) -> list[str]:
    return sorted({flag for outcome in outcomes for flag in outcome.flags})


def _summary(row: dict[str, Any], outcomes: list[QuestionOutcome]) -> AttemptSummary:
    return AttemptSummary(
        id=row["id"],
        connection_key_id=row["connection_key_id"],
        conversation_id=row["conversation_id"],
        requester_id=row["requester_id"],
        target_id=row["target_id"],
        score=row["score"],
        passed=row["passed"],
        unlock_state=UnlockState(row["unlock_state"]),
        flags=_flags(outcomes),
        submitted_at=row["submitted_at"],
        submitted_by=row["submitted_by"],
    )


def _line(o: QuestionOutcome) -> ScoreLine:
    return ScoreLine(
        question_id=o.question_id,
        kind=o.kind,
        scorer=o.scorer,
        scorer_version=o.scorer_version,
        score=o.score,
        passed=o.passed,
        feedback=o.feedback,
        error=o.error,
        criteria=o.criteria,
        flags=list(o.flags),
        fallback_from=o.fallback_from,
        fallback_reason=o.fallback_reason,
        variant=o.variant,
    )


def _view(row: DecisionRow) -> DecisionView:
    return DecisionView(
        id=row.id,
        attempt_id=row.attempt_id,
        conversation_id=row.conversation_id,
        moderator_id=row.moderator_id,
        decision=row.decision,
        reason=row.reason,
        previous_state=row.previous_state,
        new_state=row.new_state,
        retry_available_at=row.retry_available_at,
        decided_at=row.decided_at,
    )


def _matches(where: AttemptFilter, outcomes: list[QuestionOutcome]) -> bool:
    flags = _flags(outcomes)
    if where.flagged is not None and bool(flags) is not where.flagged:
        return False
    return where.flag is None or where.flag in flags


def _refuse_own(principal: Principal, attempt: dict[str, Any], participants: Collection[uuid.UUID] = ()) -> None:
    """FORBIDDEN when the moderator takes part in the attempt's conversation: nobody reviews or decides
    on their own case (a requester unlocking their own failure, a target their own refusal)."""
    if principal.user_id in {attempt["requester_id"], attempt["target_id"], *participants}:
        raise ServiceError(
            ErrorCode.FORBIDDEN,
            "Moderators may not review or override attempts in their own conversation; ask another moderator.",
        )


class _ReasonKeys(NamedTuple):
    """The keys a decision's reason is sealed with: its attempt's requester's (``None``: no such attempt)."""

    requester: uuid.UUID | None
    keyring: Keyring

    def open(self, row: DecisionRow) -> DecisionRow:
        if self.requester is None:
            return msgspec.structs.replace(row, reason=None)
        return open_reason(self.keyring, self.requester, row)


class _AlreadyDecided(Exception):
    """Another request with the same Idempotency-Key stored its decision first: roll back, replay it."""


class ModerationService:
    """The moderation use cases; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: ModerationStore,
        keys: KeyStore,
        profiles: ProfileStore,
        outbox: OutboxStore,
        pubsub: PubSub,
        audit: AuditLog,
        clock: Callable[[], datetime],
        on_events_written: Callable[[], None],
    ) -> None:
        self._settings = settings.moderation
        self._policy = RetryPolicy(settings.retry.cooldown_seconds, settings.retry.max_attempts_per_day)
        self._db = db
        self._store = store
        self._keys = keys
        self._profiles = profiles
        self._outbox = outbox
        self._pubsub = pubsub
        self._audit = audit
        self._clock = clock
        self._on_events_written = on_events_written
        self._encoder = msgspec.json.Encoder()

    @property
    def settings(self) -> ModerationSettings:
        """The ``[moderation]`` section (page sizes, reason length)."""
        return self._settings

    async def list_attempts(
        self, principal: Principal, where: AttemptFilter, after: PageCursor | None, limit: int
    ) -> AttemptPage:
        """A page of attempts matching ``where``, newest first, after ``after``."""
        items: list[AttemptSummary] = []
        position, exhausted = after, False
        for _ in range(_MAX_SCAN_BATCHES):
            rows = await self._store.attempt_page(where, position, limit + 1)
            for row in rows:
                position = PageCursor(row["submitted_at"], row["id"])
                outcomes = _outcomes.decode(row["breakdown"])
                if _matches(where, outcomes):
                    items.append(_summary(row, outcomes))
                    if len(items) > limit:
                        break
            if len(items) > limit or len(rows) <= limit:
                exhausted = len(items) <= limit
                break
        if len(items) > limit:
            items = items[:limit]
            position = PageCursor(items[-1].submitted_at, items[-1].id)
        next_cursor = None if exhausted or position is None else encode_cursor(position)
        await self._audit.record(  # in a transaction of its own: nothing else is written
            actor=AuditActor.from_principal(principal),
            action="moderation.attempts_listed",
            subject_type="attempt",
            subject_id=None,
            change={"filter": msgspec.to_builtins(where), "count": len(items)},
        )
        return AttemptPage(items=items, next_cursor=next_cursor)

    async def attempt_detail(self, principal: Principal, attempt_id: uuid.UUID) -> AttemptDetail:
        """The attempt in full; NOT_FOUND when unknown, FORBIDDEN in the moderator's own conversation.
        The read is audited: it shows the answers."""
        row = await self._store.attempt(attempt_id)
        if row is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "Attempt not found.", field="id")
        _refuse_own(principal, row)  # before anything is decrypted
        # Read again to be opened by the key store, which knows which keys the row's tokens need.
        record = await self._keys.get_attempt(attempt_id)  # decrypted; erased people's fields are None
        if record is None:  # deleted in between
            raise ServiceError(ErrorCode.NOT_FOUND, "Attempt not found.", field="id")
        try:
            found = await self._keys.get_quiz(row["connection_key_id"])
        except KeyDestroyedError:  # the target was erased: their questions are unreadable by design
            found = None
            record = msgspec.structs.replace(record, erased=[*record.erased, "questions"])
        questions = found[0].questions if found else []
        conversation = await self._profiles.get_conversation(row["conversation_id"])
        if conversation is not None:
            _refuse_own(principal, row, conversation.participant_ids)
        requester = record.requester_id
        stored = await self._store.decisions(attempt_id)
        keyring = await self._keys.encryption.keyring_covering({requester: [d.reason for d in stored]})
        decisions = [open_reason(keyring, requester, d) for d in stored]
        if decisions and keyring.is_destroyed(requester):  # reasons are sealed with the requester's key
            record = msgspec.structs.replace(record, erased=[*record.erased, "decisions.reason"])
        detail = AttemptDetail(
            attempt=_summary(row, _outcomes.decode(row["breakdown"])),
            conversation_state=(await self._seen_by(conversation, requester)) if conversation else None,
            retry_available_at=record.retry_available_at,
            started_at=record.started_at,
            total_elapsed_ms=record.total_elapsed_ms,
            feedback=record.feedback,
            experiments=_experiments.decode(row["experiments"]),
            breakdown=[_line(msgspec.convert(line, QuestionOutcome)) for line in record.breakdown],
            shadow_breakdown=[_line(msgspec.convert(line, QuestionOutcome)) for line in record.shadow_breakdown],
            questions=[ReviewQuestion(q.id, q.position, q.kind, q.prompt, q.choices, q.answer_key) for q in questions],
            answers=None
            if record.responses is None
            else [ReviewAnswer(a.question_id, a.value, a.elapsed_ms) for a in record.responses],
            erased=list(record.erased),
            decisions=[_view(d) for d in decisions],
        )
        await self._audit.record(  # in a transaction of its own: nothing else is written
            actor=AuditActor.from_principal(principal),
            action="moderation.attempt_viewed",
            subject_type="attempt",
            subject_id=attempt_id,
            change={"conversationId": str(row["conversation_id"])},
        )
        return detail

    async def override(
        self,
        principal: Principal,
        attempt_id: uuid.UUID,
        data: OverrideInput,
        idempotency_key: str | None = None,
    ) -> OverrideResult:
        """Apply a moderator's decision to the attempt's conversation (see
        :mod:`app.domain.moderation_rules`). Bad reason: BAD_USER_INPUT; unknown attempt: NOT_FOUND; the
        moderator's own conversation: FORBIDDEN; a decision that does not apply, a concurrent change or a
        reused key with another request: CONFLICT."""
        try:
            reason = clean_reason(data.reason, self._settings.max_reason_chars)
        except ValueError as exc:
            raise ServiceError(ErrorCode.BAD_USER_INPUT, str(exc), field="reason") from None
        key_id = idempotency_id(principal.user_id, idempotency_key) if idempotency_key else None
        # The reason is sealed with the requester's key, loaded (and created if need be) before the
        # transaction, so a rolled-back transaction never leaves a cached key whose row is gone.
        found = await self._store.attempt(attempt_id)
        if found is not None:
            _refuse_own(principal, found)  # before any key is created or replay looked up
        requester = found["requester_id"] if found else None
        keyring = await self._keys.encryption.keyring([requester], create=True) if requester else Keyring()
        keys = _ReasonKeys(requester, keyring)
        try:
            result, status = await self._override(principal, attempt_id, data, reason, key_id, keys)
        except _AlreadyDecided:
            assert key_id is not None
            stored = await self._store.decision_by_idempotency(key_id)
            assert stored is not None  # the other transaction committed, or ours would have inserted
            return self._replay(stored, attempt_id, data, reason, keys)
        if status is not None:
            self._on_events_written()
            await self._pubsub.publish(status_channel(status.conversation_id), self._encoder.encode(status))
        log.info(
            "moderation override",
            attempt_id=str(attempt_id),
            decision=data.decision.value,
            applied=result.applied,
            replayed=result.replayed,
            unlock_state=result.unlock_state.value,
        )
        return result

    @staticmethod
    def _replay(
        stored: DecisionRow, attempt_id: uuid.UUID, data: OverrideInput, reason: str, keys: _ReasonKeys
    ) -> OverrideResult:
        """The first answer to this key again, or CONFLICT when the key came with another request: another
        attempt, decision or reason (once the requester is erased the reason cannot be compared)."""
        reused = stored.attempt_id != attempt_id or stored.decision is not data.decision
        if not reused:
            stored = keys.open(stored)
            reused = stored.reason is not None and stored.reason != reason
        if reused:
            raise ServiceError(
                ErrorCode.CONFLICT,
                "This Idempotency-Key was already used for another request.",
                field="Idempotency-Key",
            )
        return OverrideResult(
            applied=True,
            replayed=True,
            conversation_id=stored.conversation_id,
            unlock_state=stored.new_state,
            decision=_view(stored),
        )

    async def _replay_if_decided(
        self, key_id: uuid.UUID | None, attempt_id: uuid.UUID, data: OverrideInput, reason: str, keys: _ReasonKeys
    ) -> OverrideResult | None:
        if key_id is None:
            return None
        stored = await self._store.decision_by_idempotency(key_id)
        return None if stored is None else self._replay(stored, attempt_id, data, reason, keys)

    async def _override(
        self,
        principal: Principal,
        attempt_id: uuid.UUID,
        data: OverrideInput,
        reason: str,
        key_id: uuid.UUID | None,
        keys: _ReasonKeys,
    ) -> tuple[OverrideResult, ConversationStatusChanged | None]:
        now = self._clock()
        async with self._db.transaction():
            if (replay := await self._replay_if_decided(key_id, attempt_id, data, reason, keys)) is not None:
                return replay, None
            attempt = await self._store.attempt(attempt_id)
            if attempt is None:
                raise ServiceError(ErrorCode.NOT_FOUND, "Attempt not found.", field="id")
            conversation = await self._profiles.get_conversation(attempt["conversation_id"])
            if conversation is None:
                raise ServiceError(ErrorCode.NOT_FOUND, "The attempt's conversation no longer exists.")
            _refuse_own(principal, attempt, conversation.participant_ids)
            seen = await self._seen_by(conversation, attempt["requester_id"])
            try:
                outcome = await self._decide(data, attempt, seen, conversation.moderation_locked_at is not None, now)
            except ServiceError:
                # A request with this key may have committed since the look above (PostgreSQL reads each
                # statement's own snapshot): what we saw may be its doing, so it is a replay, not a refusal.
                if (replay := await self._replay_if_decided(key_id, attempt_id, data, reason, keys)) is not None:
                    return replay, None
                raise
            if not outcome.changed:
                # Likewise: already so, perhaps because the same request just made it so.
                if (replay := await self._replay_if_decided(key_id, attempt_id, data, reason, keys)) is not None:
                    return replay, None
            actor = AuditActor.from_principal(principal)
            audited = {
                "decision": data.decision.value,
                "reason": reason,
                "conversationId": str(conversation.id),
                "previousState": seen.value,
                "newState": outcome.state.value,
            }
            if not outcome.changed:
                await self._audit.record(
                    actor=actor,
                    action="moderation.override_unchanged",
                    subject_type="attempt",
                    subject_id=attempt_id,
                    change=audited,
                )
                result = OverrideResult(
                    applied=False,
                    replayed=False,
                    conversation_id=conversation.id,
                    unlock_state=seen,
                    decision=None,
                )
                return result, None
            requester = attempt["requester_id"]
            decision_id = uuid.uuid4()
            sealer = keys.keyring
            if sealer.is_destroyed(requester):  # erased: the reason is sealed under a key thrown away at once
                sealer = Keyring({requester: UserKeys(new_data_key())})
            row = DecisionRow(
                id=decision_id,
                attempt_id=attempt_id,
                conversation_id=conversation.id,
                moderator_id=principal.user_id,
                decision=data.decision,
                reason=seal_reason(sealer, requester, decision_id, reason),
                previous_state=seen,
                new_state=outcome.state,
                retry_available_at=outcome.retry_available_at,
                idempotency_id=key_id,
                decided_at=now,
            )
            if not await self._store.insert_decision(row):
                raise _AlreadyDecided
            if not await self._store.move_conversation(
                conversation.id, conversation.unlock_state, data.decision, decision_id, now
            ):
                raise ServiceError(ErrorCode.CONFLICT, "The conversation changed meanwhile; look again and retry.")
            if data.decision is OverrideDecision.LOCK:
                # A quiz issued before the lock, in either direction, is never answered: submits are refused
                # while the lock holds, and after the lift the pair starts afresh (a new quiz).
                for participant in conversation.participant_ids:
                    await self._keys.supersede_open_keys(participant, conversation.id)
            if data.decision is OverrideDecision.ALLOW_RETRY:
                await self._profiles.set_requester_states(
                    [
                        RequesterState(
                            conversation_id=conversation.id,
                            requester_id=requester,
                            unlock_state=outcome.state,
                            retry_available_at=outcome.retry_available_at,
                            attempt_id=attempt_id,
                            updated_at=now,
                        )
                    ]
                )
            status = ConversationStatusChanged(
                conversation_id=conversation.id,
                participant_ids=conversation.participant_ids,
                unlock_state=outcome.state,
                attempt_id=attempt_id,
                score=attempt["score"],
                retry_available_at=outcome.retry_available_at,
                updated_at=now,
                requester_id=attempt["requester_id"],
            )
            await self._outbox.append([new_envelope(_STATE_EVENTS[outcome.state], conversation.id, status, now)])
            await self._audit.record(
                actor=actor,
                action="moderation.override",
                subject_type="attempt",
                subject_id=attempt_id,
                change={**audited, "decisionId": str(row.id)},
            )
        result = OverrideResult(
            applied=True,
            replayed=False,
            conversation_id=conversation.id,
            unlock_state=outcome.state,
            decision=_view(open_reason(keys.keyring, requester, row)),
        )
        return result, status

    async def _seen_by(self, conversation: ConversationRecord, requester_id: uuid.UUID) -> UnlockState:
        """The conversation's state as the attempt's requester sees it (their own retry state)."""
        own = await self._profiles.requester_state(conversation.id, requester_id)
        return participant_view(
            conversation.unlock_state, conversation.moderation_locked_at is not None, own
        ).unlock_state

    async def _decide(
        self, data: OverrideInput, attempt: dict[str, Any], current: UnlockState, locked: bool, now: datetime
    ) -> OverrideOutcome:
        excused = await self._store.is_excused(attempt["id"])
        others = await self._store.counted_failures(
            attempt["requester_id"], attempt["conversation_id"], now - WINDOW, besides=attempt["id"]
        )
        try:
            return decide_override(
                data.decision,
                current,
                attempt_passed=attempt["passed"],
                already_excused=excused,
                other_failures=others,
                now=now,
                policy=self._policy,
                moderation_locked=locked,
            )
        except DecisionRefused as exc:
            raise ServiceError(ErrorCode.CONFLICT, str(exc), field="decision") from None
