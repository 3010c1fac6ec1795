"""AdmissionGate: slots, first-come-first-served line, refusal at once over budget, cancelled waiters
leave, every completed admission feeds the average; Admitted runs a use case's precheck before the gate
and the rest inside it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from app.errors import ErrorCode, ServiceError
from app.services.admission import AdmissionGate, Admitted
from app.settings import AdmissionSettings


class FakeClock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gate(clock: FakeClock, *, concurrency: int = 2, budget: float = 2.0, max_queued: int = 100) -> AdmissionGate:
    return AdmissionGate(
        "submit", concurrency=concurrency, max_wait_seconds=budget, max_queued=max_queued, ewma_alpha=1.0, clock=clock
    )


async def hold(g: AdmissionGate, release: asyncio.Event, entered: list[str], name: str) -> str:
    async with g.admit():
        entered.append(name)
        await release.wait()
    return name


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def complete_one(g: AdmissionGate, clock: FakeClock, seconds: float) -> None:
    """Teach the gate a service time with one completed request."""
    async with g.admit():
        clock.now += seconds


@pytest.mark.asyncio
async def test_up_to_concurrency_run_and_the_rest_wait_in_order() -> None:
    clock, release, entered = FakeClock(), asyncio.Event(), []
    g = gate(clock, concurrency=2)
    tasks = [asyncio.create_task(hold(g, release, entered, f"r{i}")) for i in range(5)]
    await settle()
    assert entered == ["r0", "r1"]
    assert (g.state().in_flight, g.state().queued) == (2, 3)
    release.set()
    assert await asyncio.gather(*tasks) == ["r0", "r1", "r2", "r3", "r4"]
    assert entered == ["r0", "r1", "r2", "r3", "r4"]  # first come, first served
    assert (g.state().in_flight, g.state().queued) == (0, 0)


@pytest.mark.asyncio
async def test_refuses_at_once_when_the_expected_wait_is_over_budget() -> None:
    clock, release, entered = FakeClock(), asyncio.Event(), []
    g = gate(clock, concurrency=2, budget=2.0)
    await complete_one(g, clock, 0.5)  # S = 0.5 s, so the line drains at 4/s
    assert g.state().mean_service_seconds == pytest.approx(0.5)
    tasks = [asyncio.create_task(hold(g, release, entered, f"r{i}")) for i in range(9)]
    await settle()
    # 2 running, 7 waiting: the 7th waiter expected (6 + 1) × 0.5 / 2 = 1.75 s, admitted; a 10th
    # would wait (7 + 1) × 0.5 / 2 = 2.0 s (the budget, still in); an 11th 2.25 s: refused.
    assert g.state().queued == 7
    tasks.append(asyncio.create_task(hold(g, release, entered, "r9")))
    await settle()
    assert g.state().queued == 8
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServiceError) as refused:
        async with g.admit():
            pytest.fail("a refused request must not run")
    assert loop.time() - started < 0.05  # at once, not after waiting
    assert refused.value.code is ErrorCode.UNAVAILABLE
    assert refused.value.extra == {"retryAfter": 3}  # ceil(2.25)
    assert g.state().refused == 1
    assert g.state().queued == 8  # the refused one never joined the line
    release.set()
    assert len(await asyncio.gather(*tasks)) == 10


@pytest.mark.asyncio
async def test_admits_again_once_the_line_drains() -> None:
    clock, release, entered = FakeClock(), asyncio.Event(), []
    g = gate(clock, concurrency=1, budget=1.0)
    await complete_one(g, clock, 1.0)
    first = asyncio.create_task(hold(g, release, entered, "first"))
    await settle()
    # One slot busy on 1 s jobs: a newcomer waits 1 s (admitted), the next 2 s (refused).
    second = asyncio.create_task(hold(g, release, entered, "second"))
    await settle()
    with pytest.raises(ServiceError, match="busy"):
        async with g.admit():
            pass
    release.set()
    await asyncio.gather(first, second)
    async with g.admit():
        assert g.state().in_flight == 1


@pytest.mark.asyncio
async def test_a_cancelled_waiter_leaves_the_line() -> None:
    clock, release, entered = FakeClock(), asyncio.Event(), []
    g = gate(clock, concurrency=1)
    running = asyncio.create_task(hold(g, release, entered, "running"))
    await settle()
    gone = asyncio.create_task(hold(g, release, entered, "gone"))
    kept = asyncio.create_task(hold(g, release, entered, "kept"))
    await settle()
    assert g.state().queued == 2
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert g.state().queued == 1
    release.set()
    assert await asyncio.gather(running, kept) == ["running", "kept"]
    assert entered == ["running", "kept"]
    assert (g.state().in_flight, g.state().queued) == (0, 0)


@pytest.mark.asyncio
async def test_a_slot_handed_to_a_waiter_cancelled_in_the_same_instant_is_passed_on() -> None:
    clock, release, entered = FakeClock(), asyncio.Event(), []
    g = gate(clock, concurrency=1)
    holding = g.admit()
    await holding.__aenter__()  # this task holds the only slot
    unlucky = asyncio.create_task(hold(g, release, entered, "unlucky"))
    after = asyncio.create_task(hold(g, release, entered, "after"))
    await settle()
    release.set()
    await holding.__aexit__(None, None, None)  # hands the slot to "unlucky" without yielding to it...
    unlucky.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await unlucky
    assert await asyncio.wait_for(after, 2) == "after"  # the slot was passed on, not lost
    assert entered == ["after"]
    assert (g.state().in_flight, g.state().queued) == (0, 0)


@pytest.mark.asyncio
async def test_a_waiter_still_in_line_at_the_budget_is_refused_then() -> None:
    # The estimate said yes (nothing measured yet), but the job ahead takes far longer than the budget.
    clock, release, entered = FakeClock(), asyncio.Event(), []
    g = gate(clock, concurrency=1, budget=0.05)
    running = asyncio.create_task(hold(g, release, entered, "slow"))
    await settle()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServiceError) as refused:
        async with g.admit():
            pytest.fail("an overdue waiter must not run")
    assert 0.04 <= loop.time() - started < 1.0
    assert refused.value.code is ErrorCode.UNAVAILABLE and refused.value.extra == {"retryAfter": 1}
    assert (g.state().queued, g.state().overdue, g.state().refused) == (0, 1, 1)
    release.set()
    assert await running == "slow"
    async with g.admit():  # the slot it never took is not lost
        assert g.state().in_flight == 1
    assert g.state().in_flight == 0


@pytest.mark.asyncio
async def test_every_completed_admission_feeds_the_service_time_and_a_cancelled_one_does_not() -> None:
    """A request that fails fast held its slot only briefly: that is what the next in line waited for, so
    it counts (only successes counting kept the estimate at the slow successes' time while fast failures
    filled the line). A cancelled one stopped at an arbitrary point: it does not count."""
    clock = FakeClock()
    g = gate(clock)
    task = asyncio.create_task(complete_one(g, clock, 0.0))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert g.state().mean_service_seconds is None
    with pytest.raises(ServiceError):
        async with g.admit():
            clock.now += 0.5
            raise ServiceError(ErrorCode.BAD_USER_INPUT, "bad")
    assert g.state().mean_service_seconds == pytest.approx(0.5)
    assert g.state().in_flight == 0  # failed and cancelled work still gave its slot back
    await complete_one(g, clock, 0.25)
    assert g.state().mean_service_seconds == pytest.approx(0.25)


@pytest.mark.asyncio
async def test_the_line_has_a_hard_bound_before_any_estimate_exists() -> None:
    clock, release, entered = FakeClock(), asyncio.Event(), []
    g = gate(clock, concurrency=1, max_queued=2)
    tasks = [asyncio.create_task(hold(g, release, entered, f"r{i}")) for i in range(3)]
    await settle()
    assert g.state().mean_service_seconds is None and g.state().queued == 2
    with pytest.raises(ServiceError) as refused:
        async with g.admit():
            pass
    assert refused.value.code is ErrorCode.UNAVAILABLE and refused.value.extra["retryAfter"] >= 1
    release.set()
    await asyncio.gather(*tasks)


@pytest.mark.asyncio
async def test_admitted_calls_the_use_case_with_its_arguments_inside_the_gate() -> None:
    clock = FakeClock()
    g = gate(clock, concurrency=1)
    seen: list[tuple[object, ...]] = []

    async def use_case(a: int, *, b: str) -> str:
        seen.append((a, b, g.state().in_flight))
        return f"{a}{b}"

    call: Callable[..., object] = Admitted(use_case, g)
    assert await call(1, b="x") == "1x"  # type: ignore[misc]
    assert seen == [(1, "x", 1)]
    assert g.state().in_flight == 0


def test_from_settings_uses_the_admission_section() -> None:
    g = AdmissionGate.from_settings("create", AdmissionSettings(concurrency=3, max_wait_seconds=1.5))
    state = g.state()
    assert (state.operation, state.concurrency, state.in_flight, state.expected_wait_seconds) == ("create", 3, 0, 0.0)


class FloodableUseCase:
    """A use case with a precheck: callers named "flood" are over their rate limit (refused there after a
    round trip to the limiter); the work itself holds its slot until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.ran: list[str] = []

    async def __call__(self, caller: str) -> str:
        await self.precheck(caller)
        return await self.run(caller)

    async def precheck(self, caller: str) -> None:
        await asyncio.sleep(0)  # the limiter's round trip
        if caller.startswith("flood"):
            raise ServiceError(ErrorCode.RATE_LIMITED, "Too many requests; try again later.", retryAfter=30)

    async def run(self, caller: str) -> str:
        self.ran.append(caller)
        await self.release.wait()
        return caller


@pytest.mark.asyncio
async def test_a_flood_of_rate_limited_requests_does_not_make_others_unavailable() -> None:
    """Both slots are busy with real work (1 s each, as learned): a client over its rate limit floods the
    service. Its requests are refused RATE_LIMITED before the gate, so they take no place in line, and a
    normal user's request waits its turn instead of being refused UNAVAILABLE."""
    clock = FakeClock()
    g = gate(clock, concurrency=2, budget=2.0)
    await complete_one(g, clock, 1.0)  # the gate learns S = 1 s: 2 s of budget admits 3 in line
    use_case = FloodableUseCase()
    call: Callable[..., Awaitable[str]] = Admitted(use_case, g)  # type: ignore[assignment]
    busy = [asyncio.create_task(call(f"busy{i}")) for i in range(2)]
    await settle()
    assert g.state().in_flight == 2

    flood = await asyncio.gather(*(call(f"flood{i}") for i in range(20)), return_exceptions=True)
    assert all(isinstance(e, ServiceError) and e.code is ErrorCode.RATE_LIMITED for e in flood), flood
    assert g.state().queued == 0 and g.state().refused == 0

    normal = asyncio.create_task(call("normal"))
    await settle()
    assert g.state().queued == 1  # waiting its turn, not refused
    use_case.release.set()
    assert await normal == "normal"
    assert await asyncio.gather(*busy) == ["busy0", "busy1"]
    assert use_case.ran == ["busy0", "busy1", "normal"]  # the flood never reached the work


@pytest.mark.asyncio
async def test_a_use_case_without_precheck_runs_whole_inside_the_gate() -> None:
    clock = FakeClock()
    g = gate(clock, concurrency=1)
    inside: list[int] = []

    async def use_case() -> None:
        inside.append(g.state().in_flight)

    await Admitted(use_case, g)()
    assert inside == [1]
