"""Each requester's side of a conversation, and what each participant is shown. Pure.

A conversation row holds what the pair shares: LOCKED or UNLOCKED, and a moderator's lock. The outcome
of a failed attempt (RETRY_AVAILABLE or COOLDOWN, with a retry time) belongs to the requester who took
it, so two people quizzing each other never overwrite each other's cooldown.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from msgspec import Struct

from app.domain.quiz import UnlockState

__all__ = ["CompletedOutcome", "ParticipantView", "RequesterState", "apply_completed", "participant_view"]


class RequesterState(Struct, frozen=True):
    """One requester's state in one conversation (their latest attempt's outcome)."""

    conversation_id: uuid.UUID
    requester_id: uuid.UUID
    unlock_state: UnlockState
    retry_available_at: datetime | None
    attempt_id: uuid.UUID | None
    updated_at: datetime


class ParticipantView(Struct, frozen=True):
    """What one participant sees: the conversation's state for them and when they may try again."""

    unlock_state: UnlockState
    retry_available_at: datetime | None


def participant_view(
    conversation_state: UnlockState, moderation_locked: bool, own: RequesterState | None
) -> ParticipantView:
    """UNLOCKED for both once unlocked; LOCKED for both while a moderator's lock holds; otherwise the
    viewer's own retry state, or LOCKED when they never took the quiz (the other person's cooldown is
    not theirs)."""
    if conversation_state is UnlockState.UNLOCKED:
        return ParticipantView(UnlockState.UNLOCKED, None)
    if moderation_locked or own is None or own.unlock_state is UnlockState.UNLOCKED:
        return ParticipantView(UnlockState.LOCKED, None)
    return ParticipantView(own.unlock_state, own.retry_available_at)


class CompletedOutcome(Struct, frozen=True):
    """What applying a QUIZ_COMPLETED does: the state the requester sees, and whether the conversation
    is to be unlocked now (``unlock``) or stays as it is."""

    state: UnlockState
    retry_available_at: datetime | None
    unlock: bool
    own_state: UnlockState | None = None
    """The requester's own state to record, where it differs from ``state`` (``None``: ``state``): a
    failure during a moderator's lock is reported LOCKED, and its cooldown kept for after the lift."""
    own_retry_available_at: datetime | None = None


def apply_completed(
    conversation_state: UnlockState,
    moderation_locked: bool,
    passed: bool,
    decided: UnlockState,
    retry_available_at: datetime | None,
    *,
    pass_revoked: bool = False,
) -> CompletedOutcome:
    """The effect of one completed attempt. UNLOCKED is final (a late failure never locks again); a
    pass while a moderator's lock holds, or one the lock covers though it has been lifted since
    (``pass_revoked``: see :func:`app.domain.moderation_rules.lock_covers`), does not unlock (the
    requester sees LOCKED); a failure only sets the requester's own retry state, and while a moderator's
    lock holds it is reported LOCKED: nobody may retry until a moderator lifts the lock."""
    if conversation_state is UnlockState.UNLOCKED:
        return CompletedOutcome(UnlockState.UNLOCKED, None, unlock=False)
    if passed or decided is UnlockState.UNLOCKED:
        if moderation_locked or pass_revoked:
            return CompletedOutcome(UnlockState.LOCKED, None, unlock=False)
        return CompletedOutcome(UnlockState.UNLOCKED, None, unlock=True)
    if moderation_locked:
        return CompletedOutcome(
            UnlockState.LOCKED, None, unlock=False, own_state=decided, own_retry_available_at=retry_available_at
        )
    return CompletedOutcome(decided, retry_available_at, unlock=False)
