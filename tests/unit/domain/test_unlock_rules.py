"""Unlock rules: UNLOCKED is sticky, cooldown after a failure, COOLDOWN when the daily budget is spent."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from app.domain.quiz import UnlockState
from app.domain.unlock_rules import (
    WINDOW,
    RecordRefusal,
    RetryPolicy,
    UnlockDecision,
    decide_after_attempt,
    may_record_attempt,
    may_start_attempt,
    next_conversation_state,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(cooldown_seconds=60, max_attempts_per_day=3)
H = timedelta(hours=1)
S = timedelta(seconds=1)


def test_a_pass_unlocks_whatever_the_history() -> None:
    failures = [NOW - 3 * H, NOW - 2 * H, NOW - H]
    assert decide_after_attempt(True, failures, NOW, POLICY) == UnlockDecision(UnlockState.UNLOCKED, None)
    assert decide_after_attempt(True, [], NOW, POLICY).state is UnlockState.UNLOCKED


def test_first_failure_opens_a_retry_after_the_cooldown() -> None:
    decision = decide_after_attempt(False, [NOW], NOW, POLICY)
    assert decision == UnlockDecision(UnlockState.RETRY_AVAILABLE, NOW + timedelta(seconds=60))


def test_failures_below_the_daily_limit_are_retryable() -> None:
    decision = decide_after_attempt(False, [NOW - 2 * H, NOW], NOW, POLICY)
    assert decision.state is UnlockState.RETRY_AVAILABLE
    assert decision.retry_available_at == NOW + 60 * S


def test_reaching_the_daily_limit_means_cooldown_until_the_oldest_failure_ages_out() -> None:
    failures = [NOW - 5 * H, NOW - 2 * H, NOW]
    decision = decide_after_attempt(False, failures, NOW, POLICY)
    assert decision == UnlockDecision(UnlockState.COOLDOWN, NOW - 5 * H + WINDOW)


def test_failures_in_any_order_give_the_same_decision() -> None:
    failures = [NOW, NOW - 5 * H, NOW - 2 * H]
    assert decide_after_attempt(False, failures, NOW, POLICY).retry_available_at == NOW + 19 * H


def test_more_failures_than_the_limit_wait_for_enough_to_age_out() -> None:
    failures = [NOW - 6 * H, NOW - 5 * H, NOW - 2 * H, NOW]  # 4 in the window, limit 3: two must age out
    decision = decide_after_attempt(False, failures, NOW, POLICY)
    assert decision == UnlockDecision(UnlockState.COOLDOWN, NOW - 5 * H + WINDOW)


def test_failures_older_than_a_day_do_not_count() -> None:
    failures = [NOW - 30 * H, NOW - 25 * H, NOW - H, NOW]
    assert decide_after_attempt(False, failures, NOW, POLICY).state is UnlockState.RETRY_AVAILABLE


def test_window_boundary_is_exclusive() -> None:
    exactly_a_day = [NOW - WINDOW, NOW - H, NOW]
    assert decide_after_attempt(False, exactly_a_day, NOW, POLICY).state is UnlockState.RETRY_AVAILABLE
    just_inside = [NOW - WINDOW + S, NOW - H, NOW]
    no_cooldown = RetryPolicy(cooldown_seconds=0, max_attempts_per_day=3)
    assert decide_after_attempt(False, just_inside, NOW, no_cooldown) == UnlockDecision(UnlockState.COOLDOWN, NOW + S)
    # with the usual cooldown the later of the two times wins
    assert decide_after_attempt(False, just_inside, NOW, POLICY) == UnlockDecision(UnlockState.COOLDOWN, NOW + 60 * S)


def test_cooldown_retry_time_is_never_before_the_per_failure_cooldown() -> None:
    policy = RetryPolicy(cooldown_seconds=3600, max_attempts_per_day=3)
    failures = [NOW - WINDOW + S, NOW - H, NOW]  # the window reopens in 1 s, but the cooldown is an hour
    assert decide_after_attempt(False, failures, NOW, policy) == UnlockDecision(UnlockState.COOLDOWN, NOW + H)


def test_zero_cooldown_allows_an_immediate_retry() -> None:
    policy = RetryPolicy(cooldown_seconds=0, max_attempts_per_day=3)
    assert decide_after_attempt(False, [NOW], NOW, policy).retry_available_at == NOW
    assert may_start_attempt([NOW], NOW, policy) is None


def test_one_attempt_a_day() -> None:
    policy = RetryPolicy(cooldown_seconds=60, max_attempts_per_day=1)
    assert decide_after_attempt(False, [NOW], NOW, policy) == UnlockDecision(UnlockState.COOLDOWN, NOW + WINDOW)


def test_may_start_without_history() -> None:
    assert may_start_attempt([], NOW, POLICY) is None


def test_may_start_waits_for_the_cooldown() -> None:
    assert may_start_attempt([NOW], NOW, POLICY) == NOW + 60 * S
    assert may_start_attempt([NOW], NOW + 59 * S, POLICY) == NOW + 60 * S
    assert may_start_attempt([NOW], NOW + 60 * S, POLICY) is None


def test_may_start_waits_for_the_window_when_the_limit_is_spent() -> None:
    failures = [NOW - 5 * H, NOW - 2 * H, NOW - H]
    reopens = NOW - 5 * H + WINDOW
    assert may_start_attempt(failures, NOW, POLICY) == reopens
    assert may_start_attempt(failures, reopens - S, POLICY) == reopens
    assert may_start_attempt(failures, reopens, POLICY) is None


def test_decision_and_admission_agree_over_random_histories() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        policy = RetryPolicy(
            cooldown_seconds=rng.choice([0, 1, 60, 3600, 2 * 86400]), max_attempts_per_day=rng.randint(1, 5)
        )
        failures = [NOW - timedelta(seconds=rng.randint(1, 2 * 86400)) for _ in range(rng.randint(0, 8))]
        failures.append(NOW)  # this attempt failed
        decision = decide_after_attempt(False, failures, NOW, policy)
        recent = [f for f in failures if f > NOW - WINDOW]
        expected_state = (
            UnlockState.COOLDOWN if len(recent) >= policy.max_attempts_per_day else UnlockState.RETRY_AVAILABLE
        )
        assert decision.state is expected_state
        retry = decision.retry_available_at
        assert retry is not None and retry >= NOW + timedelta(seconds=policy.cooldown_seconds)
        # the promised time is exactly when a new attempt is admitted
        assert may_start_attempt(failures, retry, policy) is None
        if retry > NOW:
            assert may_start_attempt(failures, retry - timedelta(microseconds=1), policy) == retry
            assert may_start_attempt(failures, NOW, policy) == retry


def test_naive_and_aware_times_are_not_mixed_silently() -> None:
    with pytest.raises(TypeError):
        decide_after_attempt(False, [datetime(2024, 5, 1, 12)], NOW, POLICY)


@pytest.mark.parametrize("current", list(UnlockState))
@pytest.mark.parametrize("state", list(UnlockState))
def test_next_conversation_state(current: UnlockState, state: UnlockState) -> None:
    decision = UnlockDecision(state, NOW if state in (UnlockState.COOLDOWN, UnlockState.RETRY_AVAILABLE) else None)
    result = next_conversation_state(current, decision)
    if current is UnlockState.UNLOCKED:
        assert result is UnlockState.UNLOCKED  # sticky: a late failure never relocks
    else:
        assert result is state


def test_a_replayed_failure_after_an_unlock_keeps_it_unlocked() -> None:
    state = next_conversation_state(UnlockState.LOCKED, decide_after_attempt(True, [], NOW, POLICY))
    failures = [NOW - 2 * H, NOW - H, NOW]
    state = next_conversation_state(state, decide_after_attempt(False, failures, NOW, POLICY))
    assert state is UnlockState.UNLOCKED


# ------------------------------------------------------------------ the check where attempts are recorded


def test_may_record_attempt_checks_at_the_quizs_issue_time_not_at_submission() -> None:
    policy = RetryPolicy(cooldown_seconds=600, max_attempts_per_day=3)
    failed_at = NOW
    issued_during_cooldown = NOW + timedelta(seconds=60)
    answered_after_cooldown = NOW + timedelta(seconds=900)
    # Checked at submission time it would pass; the quiz was issued during the cooldown, so it does not,
    # and never will: the refusal is final (a new quiz may start now, this one's key is spent).
    assert may_start_attempt([failed_at], answered_after_cooldown, policy) is None
    assert may_record_attempt([failed_at], issued_during_cooldown, answered_after_cooldown, policy) == (
        RecordRefusal(answered_after_cooldown, final=True)
    )
    # Answered during the cooldown: the wait ends with the cooldown (not final: a new quiz may start then).
    answered_soon = NOW + timedelta(seconds=120)
    assert may_record_attempt([failed_at], issued_during_cooldown, answered_soon, policy) == RecordRefusal(
        NOW + timedelta(seconds=600), final=False
    )
    # Issued after the cooldown: recorded.
    assert may_record_attempt([failed_at], NOW + timedelta(seconds=601), answered_after_cooldown, policy) is None


def test_may_record_attempt_counts_the_daily_limit_and_later_failures() -> None:
    policy = RetryPolicy(cooldown_seconds=0, max_attempts_per_day=2)
    assert may_record_attempt([NOW - H], NOW, NOW, policy) is None
    assert may_record_attempt([NOW - 2 * H, NOW - H], NOW, NOW, policy) == RecordRefusal(
        NOW - 2 * H + WINDOW, final=False
    )
    # A failure recorded after the quiz was issued (it raced the create) counts too.
    assert may_record_attempt([NOW - H, NOW + H], NOW, NOW + 2 * H, policy) == RecordRefusal(
        NOW - H + WINDOW, final=False
    )
    # Once the window has reopened the refusal is final: waiting for this quiz would never end.
    later = NOW - H + WINDOW + H
    assert may_record_attempt([NOW - H, NOW + H], NOW, later, policy) == RecordRefusal(later, final=True)
    assert may_record_attempt([], NOW, NOW, policy) is None
