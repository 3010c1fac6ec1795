"""Admission maths: the service-time average, Little's-law wait, the decision and its Retry-After."""

from __future__ import annotations

import math

import pytest

from app.domain.admission import AdmissionDecision, ServiceTime, decide, expected_wait, observe, retry_after_seconds


def test_the_first_sample_seeds_the_average() -> None:
    assert observe(ServiceTime(), 0.4, alpha=0.2) == ServiceTime(0.4, 1)


def test_the_average_weights_the_newest_sample_by_alpha() -> None:
    st = observe(ServiceTime(), 1.0, alpha=0.25)
    st = observe(st, 3.0, alpha=0.25)  # 0.25·3 + 0.75·1
    assert st.mean == pytest.approx(1.5)
    st = observe(st, 0.0, alpha=0.25)  # 0.75·1.5
    assert st == ServiceTime(pytest.approx(1.125), 3)


def test_alpha_one_keeps_only_the_last_sample() -> None:
    st = observe(observe(ServiceTime(), 9.0, alpha=1.0), 0.5, alpha=1.0)
    assert st.mean == 0.5


def test_the_average_converges_to_a_steady_service_time() -> None:
    st = ServiceTime(10.0, 1)
    for _ in range(60):
        st = observe(st, 0.2, alpha=0.2)
    # (1 − α)^60 · (10 − 0.2) of the old value is left: about 1.5e-5.
    assert st.mean == pytest.approx(0.2 + 9.8 * 0.8**60)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_alpha_must_be_a_weight(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        observe(ServiceTime(), 1.0, alpha=alpha)


@pytest.mark.parametrize("seconds", [-0.001, math.inf, math.nan])
def test_a_service_time_must_be_real(seconds: float) -> None:
    with pytest.raises(ValueError, match="service time"):
        observe(ServiceTime(), seconds, alpha=0.5)


def test_nobody_waits_while_a_slot_is_free() -> None:
    assert expected_wait(queued_ahead=0, in_flight=3, concurrency=4, mean_service=5.0) == 0.0


def test_wait_is_departures_needed_over_departure_rate() -> None:
    # 4 slots busy on 0.5 s jobs: they leave at 8/s; 11 ahead + our own turn = 12 departures = 1.5 s.
    assert expected_wait(queued_ahead=11, in_flight=4, concurrency=4, mean_service=0.5) == pytest.approx(1.5)
    # One slot busy, nobody ahead: we wait for that one job.
    assert expected_wait(queued_ahead=0, in_flight=1, concurrency=1, mean_service=3.0) == pytest.approx(3.0)


def test_more_slots_drain_the_line_faster() -> None:
    one = expected_wait(queued_ahead=7, in_flight=1, concurrency=1, mean_service=0.25)
    eight = expected_wait(queued_ahead=7, in_flight=8, concurrency=8, mean_service=0.25)
    assert (one, eight) == (pytest.approx(2.0), pytest.approx(0.25))


def test_without_any_completed_job_there_is_no_estimate() -> None:
    assert expected_wait(queued_ahead=50, in_flight=4, concurrency=4, mean_service=None) == 0.0


@pytest.mark.parametrize(("queued", "in_flight", "concurrency"), [(-1, 0, 1), (0, -1, 1), (0, 0, 0)])
def test_counts_are_checked(queued: int, in_flight: int, concurrency: int) -> None:
    with pytest.raises(ValueError, match="concurrency|negative"):
        expected_wait(queued, in_flight, concurrency, 1.0)


@pytest.mark.parametrize(("wait", "seconds"), [(0.0, 1), (0.3, 1), (1.0, 1), (1.01, 2), (2.5, 3), (math.inf, 1)])
def test_retry_after_is_the_wait_rounded_up_and_at_least_a_second(wait: float, seconds: int) -> None:
    assert retry_after_seconds(wait) == seconds


def test_admitted_within_budget_and_at_the_budget() -> None:
    # 16 slots of 0.4 s: 79 ahead → 80 × 0.4 / 16 = 2.0 s, exactly the budget.
    assert decide(79, 16, 16, 0.4, budget=2.0) == AdmissionDecision(True, pytest.approx(2.0))
    assert decide(0, 3, 16, 0.4, budget=2.0) == AdmissionDecision(True, 0.0)


def test_refused_over_budget_with_a_retry_after_from_the_estimate() -> None:
    # 80 ahead → 81 × 0.4 / 16 = 2.025 s > 2 s: come back in 3 s.
    assert decide(80, 16, 16, 0.4, budget=2.0) == AdmissionDecision(False, pytest.approx(2.025), 3)
    # A long line of slow jobs: 100 × 1.5 / 10 = 15 s.
    assert decide(99, 10, 10, 1.5, budget=2.0) == AdmissionDecision(False, pytest.approx(15.0), 15)
