"""Each requester's own retry state and what each participant sees (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.domain.quiz import UnlockState
from app.domain.requester_state import RequesterState, apply_completed, participant_view

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


def own(state: UnlockState, at: datetime | None = LATER) -> RequesterState:
    return RequesterState(uuid.uuid4(), uuid.uuid4(), state, at, uuid.uuid4(), NOW)


def test_a_participant_sees_their_own_retry_state_not_the_others() -> None:
    assert participant_view(UnlockState.LOCKED, False, own(UnlockState.COOLDOWN)).unlock_state is UnlockState.COOLDOWN
    view = participant_view(UnlockState.LOCKED, False, own(UnlockState.RETRY_AVAILABLE))
    assert (view.unlock_state, view.retry_available_at) == (UnlockState.RETRY_AVAILABLE, LATER)
    assert participant_view(UnlockState.LOCKED, False, None).unlock_state is UnlockState.LOCKED  # never tried


@pytest.mark.parametrize("mine", [None, own(UnlockState.COOLDOWN)])
def test_unlocked_and_a_moderators_lock_are_shared(mine: RequesterState | None) -> None:
    assert participant_view(UnlockState.UNLOCKED, False, mine).unlock_state is UnlockState.UNLOCKED
    locked = participant_view(UnlockState.LOCKED, True, mine)
    assert (locked.unlock_state, locked.retry_available_at) == (UnlockState.LOCKED, None)


def test_a_pass_unlocks_unless_a_moderator_locked_and_unlocked_is_final() -> None:
    assert apply_completed(UnlockState.LOCKED, False, True, UnlockState.UNLOCKED, None).unlock is True
    held = apply_completed(UnlockState.LOCKED, True, True, UnlockState.UNLOCKED, None)
    assert (held.state, held.unlock) == (UnlockState.LOCKED, False)
    late_failure = apply_completed(UnlockState.UNLOCKED, False, False, UnlockState.COOLDOWN, LATER)
    assert (late_failure.state, late_failure.unlock) == (UnlockState.UNLOCKED, False)


def test_a_failure_only_sets_the_requesters_own_state() -> None:
    outcome = apply_completed(UnlockState.LOCKED, False, False, UnlockState.COOLDOWN, LATER)
    assert (outcome.state, outcome.retry_available_at, outcome.unlock) == (UnlockState.COOLDOWN, LATER, False)
