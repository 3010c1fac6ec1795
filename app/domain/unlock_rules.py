"""Attempt history -> unlock state, cooldown and retry time. Pure: callers pass ``now``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from msgspec import Struct

from app.domain.quiz import UnlockState

__all__ = [
    "WINDOW",
    "RecordRefusal",
    "RetryPolicy",
    "UnlockDecision",
    "decide_after_attempt",
    "may_record_attempt",
    "may_start_attempt",
    "next_conversation_state",
]

WINDOW = timedelta(days=1)


class RetryPolicy(Struct, frozen=True):
    """Cooldown after a failure, and failed attempts allowed per rolling day."""

    cooldown_seconds: int
    max_attempts_per_day: int


class UnlockDecision(Struct, frozen=True):
    """Outcome of an attempt for the conversation: its state and when the next try opens."""

    state: UnlockState
    retry_available_at: datetime | None = None


def _window_reopens(failures: Sequence[datetime], now: datetime, policy: RetryPolicy) -> datetime | None:
    recent = sorted(f for f in failures if f > now - WINDOW)
    if len(recent) < policy.max_attempts_per_day:
        return None
    # The window reopens when enough old failures age out to leave one slot free.
    return recent[len(recent) - policy.max_attempts_per_day] + WINDOW


def decide_after_attempt(
    passed: bool, failures: Sequence[datetime], now: datetime, policy: RetryPolicy
) -> UnlockDecision:
    """Decide after an attempt at ``now``. ``failures`` are the requester's failed attempts on this
    conversation, this one included when it failed."""
    if passed:
        return UnlockDecision(UnlockState.UNLOCKED)
    reopens = _window_reopens(failures, now, policy)
    if reopens is not None:
        return UnlockDecision(UnlockState.COOLDOWN, max(reopens, now + timedelta(seconds=policy.cooldown_seconds)))
    return UnlockDecision(UnlockState.RETRY_AVAILABLE, now + timedelta(seconds=policy.cooldown_seconds))


def may_start_attempt(failures: Sequence[datetime], now: datetime, policy: RetryPolicy) -> datetime | None:
    """``None`` when the requester may take a new quiz now, else the time they may."""
    latest = max(failures, default=None)
    waits = [
        t
        for t in (
            _window_reopens(failures, now, policy),
            latest + timedelta(seconds=policy.cooldown_seconds) if latest else None,
        )
        if t is not None and t > now
    ]
    return max(waits) if waits else None


class RecordRefusal(Struct, frozen=True):
    """Why the attempt writer refuses an attempt (nothing is recorded)."""

    retry_at: datetime
    """When the requester may start a new quiz (never before the check's ``now``)."""
    final: bool
    """The requester may start a new quiz now, so waiting will not help: the quiz was refused at its
    issue time, which never changes, and failures are never removed, so its key can never be recorded.
    The writer then closes the key and answers "start a new quiz" instead of a Retry-After that would
    come round forever."""


def may_record_attempt(
    failures: Sequence[datetime], issued_at: datetime, now: datetime, policy: RetryPolicy
) -> RecordRefusal | None:
    """The policy as the attempt writer checks it, in the transaction that records the attempt:
    ``None`` when the attempt may be recorded, else a :class:`RecordRefusal`.

    An attempt starts when its quiz is issued, so the check is made at ``issued_at``, not at ``now``:
    a quiz issued during a cooldown (its create raced a failure recorded meanwhile) stays refused even
    when it is answered after the cooldown ended; checking at ``now`` would let anyone who answers
    slowly enough through. ``failures`` are every failure recorded by now, those after ``issued_at``
    included (none should exist, since a new key supersedes the open one; if one does, it counts)."""
    if may_start_attempt(failures, issued_at, policy) is None:
        return None
    wait = may_start_attempt(failures, now, policy)
    if wait is None:
        return RecordRefusal(now, final=True)
    return RecordRefusal(wait, final=False)


def next_conversation_state(current: UnlockState, decision: UnlockDecision) -> UnlockState:
    """The conversation's state after applying ``decision``: UNLOCKED is final, so a late or replayed
    failure can never lock an unlocked conversation again."""
    if current is UnlockState.UNLOCKED:
        return UnlockState.UNLOCKED
    return decision.state
