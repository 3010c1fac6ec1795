"""The circuit breaker state machine, driven by a hand-moved clock."""

from __future__ import annotations

import pytest

from scorers.llm_rubric.circuit_breaker import CircuitBreaker, CircuitState
from tests.unit.scorers.llm_rubric.conftest import FakeClock


def breaker(clock: FakeClock, threshold: int = 3, reset: float = 30.0) -> CircuitBreaker:
    return CircuitBreaker(threshold, reset, clock)


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert b.try_acquire()
        b.record_failure()


def test_opens_after_consecutive_failures(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 2)
    assert b.state is CircuitState.CLOSED and b.consecutive_failures == 2
    fail(b, 1)
    assert b.state is CircuitState.OPEN
    assert not b.try_acquire()
    assert b.retry_after() == 30.0


def test_a_success_resets_the_count(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 2)
    assert b.try_acquire()
    b.record_success()
    fail(b, 2)
    assert b.state is CircuitState.CLOSED


def test_half_open_lets_exactly_one_probe_through(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 3)
    clock.advance(29.9)
    assert b.state is CircuitState.OPEN and not b.try_acquire()
    clock.advance(0.1)
    assert b.state is CircuitState.HALF_OPEN and b.retry_after() == 0.0
    assert b.try_acquire()
    assert not b.try_acquire()  # the probe is out
    b.record_success()
    assert b.state is CircuitState.CLOSED and b.try_acquire()


def test_a_failed_probe_reopens_for_a_full_period(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 3)
    clock.advance(40)
    assert b.try_acquire()
    b.record_failure()
    assert b.state is CircuitState.OPEN and b.retry_after() == 30.0
    clock.advance(30)
    assert b.state is CircuitState.HALF_OPEN


def test_a_released_probe_lets_the_next_caller_probe(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 3)
    clock.advance(30)
    assert b.try_acquire()
    b.release()
    assert b.state is CircuitState.HALF_OPEN
    assert b.try_acquire()


def test_release_when_closed_changes_nothing(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 2)
    assert b.try_acquire()
    b.release()
    assert b.state is CircuitState.CLOSED and b.consecutive_failures == 2


def test_a_late_failure_while_open_extends_it(clock: FakeClock) -> None:
    b = breaker(clock, threshold=1)
    assert b.try_acquire() and b.try_acquire()  # two calls in flight
    b.record_failure()
    clock.advance(10)
    b.record_failure()  # the second call fails later
    assert b.retry_after() == 30.0


@pytest.mark.parametrize(("threshold", "reset"), [(0, 1.0), (1, 0.0)])
def test_rejects_bad_settings(threshold: int, reset: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold, reset)
