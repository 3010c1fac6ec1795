"""Reads of attempts for moderators, and the ``moderation_decisions`` table.

A decision's ``reason`` is a moderator's free text about an attempt (it may quote the requester's answers
or either person's profile), so it is sealed with the attempt's requester's data key, like the attempt's
responses (record id: the decision id). Rows move through this store as stored; :func:`seal_reason` and
:func:`open_reason` convert the reason.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec
from piccolo.columns.combination import WhereRaw
from piccolo.query import Select

from app.db.tables import ConnectionKeyAttempt, Conversation, ModerationDecision
from app.domain.field_crypto import FieldRef, Keyring
from app.domain.moderation_rules import OverrideDecision, PageCursor
from app.domain.quiz import UnlockState

__all__ = [
    "DECISION_TABLE",
    "AttemptFilter",
    "DecisionRow",
    "ModerationStore",
    "excused_attempt_ids",
    "open_reason",
    "seal_reason",
]

DECISION_TABLE = "moderation_decisions"

# Without the JSON columns that only the detail view needs (responses hold the requester's answers).
_SUMMARY_COLUMNS = (
    ConnectionKeyAttempt.id,
    ConnectionKeyAttempt.connection_key_id,
    ConnectionKeyAttempt.conversation_id,
    ConnectionKeyAttempt.requester_id,
    ConnectionKeyAttempt.target_id,
    ConnectionKeyAttempt.score,
    ConnectionKeyAttempt.passed,
    ConnectionKeyAttempt.breakdown,
    ConnectionKeyAttempt.unlock_state,
    ConnectionKeyAttempt.submitted_at,
    ConnectionKeyAttempt.submitted_by,
)


class AttemptFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of the attempt list; ``None`` means "any". Times are aware UTC."""

    conversation_id: uuid.UUID | None = None
    requester_id: uuid.UUID | None = None
    target_id: uuid.UUID | None = None
    passed: bool | None = None
    unlock_state: UnlockState | None = None
    flag: str | None = None
    """A scorer flag (``prompt_injection``) on at least one question; matched exactly."""
    flagged: bool | None = None
    """``True``: some question carries a flag; ``False``: none does."""
    submitted_since: datetime | None = None
    submitted_until: datetime | None = None


class DecisionRow(msgspec.Struct, frozen=True, kw_only=True):
    """One ``moderation_decisions`` row."""

    id: uuid.UUID
    attempt_id: uuid.UUID
    conversation_id: uuid.UUID
    moderator_id: uuid.UUID
    decision: OverrideDecision
    reason: str | None
    """As stored: ciphertext under the requester's data key. Opened (:func:`open_reason`): the text, or
    ``None`` when the requester was erased."""
    previous_state: UnlockState
    new_state: UnlockState
    retry_available_at: datetime | None
    idempotency_id: uuid.UUID | None
    decided_at: datetime


def seal_reason(keyring: Keyring, requester: uuid.UUID, decision_id: uuid.UUID, reason: str) -> str:
    """The stored form of a decision's reason: sealed with the attempt's requester's current key."""
    return keyring.seal(requester, FieldRef(DECISION_TABLE, "reason", decision_id), reason)


def open_reason(keyring: Keyring, requester: uuid.UUID, row: DecisionRow) -> DecisionRow:
    """``row`` with its reason decrypted (``keyring`` holds the requester's keys); ``None`` when the
    requester was erased. Legacy plaintext (from before sealing) reads as it is."""
    if row.reason is None or keyring.is_destroyed(requester):
        return msgspec.structs.replace(row, reason=None)
    ref = FieldRef(DECISION_TABLE, "reason", row.id)
    return msgspec.structs.replace(row, reason=keyring.open(requester, ref, row.reason))


def excused_attempt_ids() -> Select:
    """Sub-select of attempts a moderator excused (ALLOW_RETRY): they no longer count as failures."""
    return ModerationDecision.select(ModerationDecision.attempt_id).where(
        ModerationDecision.decision == OverrideDecision.ALLOW_RETRY.value
    )


def _json_like(column: str, pattern: str) -> WhereRaw:
    # JSON columns are `json` on PostgreSQL, which has no LIKE; the cast makes both backends compare text.
    # The pattern is a bound parameter, and the column name a constant of this module.
    return WhereRaw(f'CAST("{column}" AS TEXT) LIKE {{}}', pattern)


def _not_json_like(column: str, pattern: str) -> WhereRaw:
    return WhereRaw(f'CAST("{column}" AS TEXT) NOT LIKE {{}}', pattern)


def _decision(row: dict[str, Any]) -> DecisionRow:
    return msgspec.convert(row, DecisionRow, strict=False)


class ModerationStore:
    """Queries behind the moderation API. Writers expect to run inside a transaction."""

    async def attempt_page(self, where: AttemptFilter, after: PageCursor | None, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` attempt summaries (no responses) matching ``where`` coarsely, newest first,
        strictly after ``after``. The flag filters are a text pre-filter here: callers check exactly."""
        t = ConnectionKeyAttempt
        clauses: list[Any] = []
        for column, value in (
            (t.conversation_id, where.conversation_id),
            (t.requester_id, where.requester_id),
            (t.target_id, where.target_id),
            (t.passed, where.passed),
            (t.unlock_state, where.unlock_state.value if where.unlock_state else None),
        ):
            if value is not None:
                clauses.append(column == value)
        if where.submitted_since is not None:
            clauses.append(t.submitted_at >= where.submitted_since)
        if where.submitted_until is not None:
            clauses.append(t.submitted_at < where.submitted_until)
        # msgspec writes `"flags":[...]` only when a question has flags (omit_defaults), without spaces.
        if where.flagged is True:
            clauses.append(_json_like("breakdown", '%"flags":["%'))
        elif where.flagged is False:
            clauses.append(_not_json_like("breakdown", '%"flags":["%'))
        if where.flag is not None:
            # `_` is a LIKE wildcard: this matches a little more than the flag, never less.
            clauses.append(_json_like("breakdown", f'%"{where.flag}"%'))
        if after is not None:
            clauses.append(
                (t.submitted_at < after.submitted_at) | ((t.submitted_at == after.submitted_at) & (t.id < after.id))
            )
        query = t.select(*_SUMMARY_COLUMNS)
        if clauses:
            query = query.where(*clauses)
        return await query.order_by(t.submitted_at, t.id, ascending=False).limit(limit).run()

    async def attempt(self, attempt_id: uuid.UUID) -> dict[str, Any] | None:
        """The whole attempt row, or ``None``."""
        return await ConnectionKeyAttempt.select().where(ConnectionKeyAttempt.id == attempt_id).first().run()

    async def decisions(self, attempt_id: uuid.UUID) -> list[DecisionRow]:
        """Decisions made on the attempt, oldest first."""
        rows = (
            await ModerationDecision.select()
            .where(ModerationDecision.attempt_id == attempt_id)
            .order_by(ModerationDecision.decided_at, ModerationDecision.id)
            .run()
        )
        return [_decision(row) for row in rows]

    async def decision_by_idempotency(self, idempotency_id: uuid.UUID) -> DecisionRow | None:
        row = await ModerationDecision.select().where(ModerationDecision.idempotency_id == idempotency_id).first().run()
        return _decision(row) if row else None

    async def is_excused(self, attempt_id: uuid.UUID) -> bool:
        return (
            await ModerationDecision.exists()
            .where(
                (ModerationDecision.attempt_id == attempt_id)
                & (ModerationDecision.decision == OverrideDecision.ALLOW_RETRY.value)
            )
            .run()
        )

    async def counted_failures(
        self, requester_id: uuid.UUID, conversation_id: uuid.UUID, since: datetime, *, besides: uuid.UUID
    ) -> list[datetime]:
        """Submission times of the requester's failed, unexcused attempts on the conversation since
        ``since``, attempt ``besides`` left out."""
        t = ConnectionKeyAttempt
        rows = (
            await t.select(t.submitted_at)
            .where(
                (t.requester_id == requester_id)
                & (t.conversation_id == conversation_id)
                & (t.passed == False)  # noqa: E712 - Piccolo operator
                & (t.submitted_at > since)
                & (t.id != besides)
                & t.id.not_in(excused_attempt_ids())
            )
            .run()
        )
        return [row["submitted_at"] for row in rows]

    async def insert_decision(self, row: DecisionRow) -> bool:
        """Insert ``row`` (its reason sealed already: :func:`seal_reason`); ``False`` when its idempotency
        id is taken (the request was already made)."""
        values = msgspec.structs.asdict(row)
        values["decision"] = row.decision.value
        values["previous_state"] = row.previous_state.value
        values["new_state"] = row.new_state.value
        query = ModerationDecision.insert(ModerationDecision(**values)).returning(ModerationDecision.id)
        if row.idempotency_id is not None:
            query = query.on_conflict(target=ModerationDecision.idempotency_id, action="DO NOTHING")
        return bool(await query.run())

    async def move_conversation(
        self,
        conversation_id: uuid.UUID,
        expected: UnlockState,
        decision: OverrideDecision,
        decision_id: uuid.UUID,
        now: datetime,
    ) -> bool:
        """Apply a decision to the conversation row if its shared state is still ``expected``
        (compare-and-set: a concurrent change wins and this returns ``False``). UNLOCK unlocks and lifts
        a moderator's lock; LOCK locks and holds the lock; ALLOW_RETRY lifts the lock (the requester's
        own retry state is written by the caller)."""
        values: dict[Any, Any] = {Conversation.updated_at: now}
        if decision is OverrideDecision.UNLOCK:
            values[Conversation.unlock_state] = UnlockState.UNLOCKED.value
            values[Conversation.unlocked_at] = now
        elif decision is OverrideDecision.LOCK:
            values[Conversation.unlock_state] = UnlockState.LOCKED.value
            values[Conversation.unlocked_at] = None
        if decision is OverrideDecision.LOCK:
            values[Conversation.moderation_locked_at] = now
            values[Conversation.moderation_decision_id] = decision_id
        else:
            values[Conversation.moderation_locked_at] = None
            values[Conversation.moderation_decision_id] = None
        rows = (
            await Conversation.update(values)
            .where((Conversation.id == conversation_id) & (Conversation.unlock_state == expected.value))
            .returning(Conversation.id)
            .run()
        )
        return bool(rows)
