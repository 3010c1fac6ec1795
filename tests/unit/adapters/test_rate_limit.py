"""MemoryRateLimiter (GCRA) with a fake clock: bursts, refusal with retry_after, recovery."""

from __future__ import annotations

import pytest

from app.adapters.rate_limit import MemoryRateLimiter, RateDecision


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def limiter(start: float = 0.0) -> tuple[MemoryRateLimiter, FakeClock]:
    clock = FakeClock(start)
    rl = MemoryRateLimiter()
    rl._now = clock  # type: ignore[method-assign]
    return rl, clock


async def burst(rl: MemoryRateLimiter, key: str, limit: int, period: float, hits: int) -> list[RateDecision]:
    return [await rl.hit(key, limit, period) for _ in range(hits)]


@pytest.mark.asyncio
async def test_limit_hits_in_a_burst_then_refused() -> None:
    rl, _ = limiter()
    decisions = await burst(rl, "u1", 5, 10.0, 6)
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert all(d.retry_after == 0.0 for d in decisions[:5])
    assert decisions[5].retry_after == pytest.approx(2.0)  # one emission interval: 10 s / 5


@pytest.mark.asyncio
async def test_refused_hits_do_not_use_up_budget() -> None:
    rl, clock = limiter()
    await burst(rl, "u1", 5, 10.0, 5)
    refused = await burst(rl, "u1", 5, 10.0, 20)
    assert not any(d.allowed for d in refused)
    assert all(d.retry_after == pytest.approx(2.0) for d in refused)
    clock.now += 2.0
    assert (await rl.hit("u1", 5, 10.0)).allowed


@pytest.mark.asyncio
async def test_recovers_after_retry_after() -> None:
    rl, clock = limiter()
    await burst(rl, "u1", 5, 10.0, 5)
    refused = await rl.hit("u1", 5, 10.0)
    clock.now += refused.retry_after - 0.01
    assert not (await rl.hit("u1", 5, 10.0)).allowed
    clock.now += 0.01
    assert (await rl.hit("u1", 5, 10.0)).allowed
    assert not (await rl.hit("u1", 5, 10.0)).allowed


@pytest.mark.asyncio
async def test_full_budget_returns_after_a_period() -> None:
    rl, clock = limiter()
    await burst(rl, "u1", 5, 10.0, 6)
    clock.now += 10.0
    assert [d.allowed for d in await burst(rl, "u1", 5, 10.0, 6)] == [True] * 5 + [False]


@pytest.mark.asyncio
async def test_steady_rate_at_the_limit_is_always_allowed() -> None:
    rl, clock = limiter()
    await burst(rl, "u1", 4, 8.0, 4)
    for _ in range(20):
        clock.now += 2.0
        assert (await rl.hit("u1", 4, 8.0)).allowed
        assert not (await rl.hit("u1", 4, 8.0)).allowed


@pytest.mark.asyncio
async def test_keys_are_independent() -> None:
    rl, _ = limiter()
    await burst(rl, "u1", 2, 60.0, 2)
    assert not (await rl.hit("u1", 2, 60.0)).allowed
    assert (await rl.hit("u2", 2, 60.0)).allowed


@pytest.mark.asyncio
async def test_limit_of_one() -> None:
    rl, clock = limiter()
    assert (await rl.hit("k", 1, 60.0)).allowed
    refused = await rl.hit("k", 1, 60.0)
    assert not refused.allowed and refused.retry_after == pytest.approx(60.0)
    clock.now += 60.0
    assert (await rl.hit("k", 1, 60.0)).allowed


@pytest.mark.asyncio
@pytest.mark.parametrize(("limit", "period"), [(30, 60.0), (10, 60.0), (5, 10.0)])
async def test_configured_limits_at_a_realistic_clock(limit: int, period: float) -> None:
    rl, _ = limiter(start=123456.789)
    decisions = await burst(rl, "k", limit, period, limit + 1)
    assert [d.allowed for d in decisions] == [True] * limit + [False]
    assert decisions[-1].retry_after > 0


@pytest.mark.asyncio
async def test_burst_is_exact_despite_float_rounding() -> None:
    # Regression: an exact float comparison refused the 3rd of 3 hits at this clock value.
    rl, _ = limiter(start=1000.0)
    decisions = await burst(rl, "k", 3, 1.0, 4)
    assert [d.allowed for d in decisions] == [True, True, True, False]


@pytest.mark.asyncio
async def test_recovered_keys_are_swept() -> None:
    rl, clock = limiter()
    for i in range(1000):
        await rl.hit(f"old-{i}", 10, 1.0)
    clock.now += 5.0
    for i in range(100):  # crosses the 1024th hit, which sweeps keys whose budget fully recovered
        await rl.hit(f"new-{i}", 10, 1.0)
    assert not any(key.startswith("old-") for key in rl._tat)


@pytest.mark.asyncio
async def test_closing_resets_state() -> None:
    rl, _ = limiter()
    async with rl:
        await burst(rl, "k", 1, 60.0, 1)
        assert not (await rl.hit("k", 1, 60.0)).allowed
    assert (await rl.hit("k", 1, 60.0)).allowed
