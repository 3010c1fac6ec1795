"""RedisRateLimiter against a real Redis: the same decisions as MemoryRateLimiter, atomic under concurrent
clients, keys that expire with their budget, and the documented answer while Redis is away."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from app.adapters.rate_limit import MemoryRateLimiter, RateDecision, RedisRateLimiter
from app.errors import ErrorCode, ServiceError
from app.services.limits import enforce_limit
from tests import redis_server as redis_fixtures
from tests.redis_server import RedisServer

# The Redis fixtures (assigned, not imported, so the test parameters of the same names read plainly).
redis_server = redis_fixtures.redis_server
redis_url = redis_fixtures.redis_url
closed_redis_url = redis_fixtures.closed_redis_url


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


Step = tuple[float, str, int, float]  # (advance the clock by, key, limit, period)

SCENARIOS: dict[str, tuple[float, list[Step]]] = {
    "burst then refused": (0.0, [(0, "u1", 5, 10.0)] * 6),
    "refused hits use no budget": (0.0, [(0, "u1", 5, 10.0)] * 25 + [(2.0, "u1", 5, 10.0), (0, "u1", 5, 10.0)]),
    "recovers exactly after retry_after": (
        0.0,
        [(0, "u1", 5, 10.0)] * 6 + [(1.99, "u1", 5, 10.0), (0.01, "u1", 5, 10.0), (0, "u1", 5, 10.0)],
    ),
    "full budget after a period": (0.0, [(0, "u1", 5, 10.0)] * 6 + [(10.0, "u1", 5, 10.0)] + [(0, "u1", 5, 10.0)] * 5),
    "steady rate at the limit": (0.0, [(0, "u1", 4, 8.0)] * 4 + [(2.0, "u1", 4, 8.0), (0, "u1", 4, 8.0)] * 20),
    "keys are independent": (0.0, [(0, "u1", 2, 60.0)] * 3 + [(0, "u2", 2, 60.0)]),
    "limit of one": (0.0, [(0, "k", 1, 60.0)] * 2 + [(60.0, "k", 1, 60.0)]),
    "configured limits at a realistic clock": (
        123456.789,
        [(0, "a", 30, 60.0)] * 31 + [(0, "b", 10, 60.0)] * 11 + [(0, "c", 5, 10.0)] * 6,
    ),
    "float rounding of a burst": (1000.0, [(0, "k", 3, 1.0)] * 4),
    "wall-clock sized timestamps": (1.7e9 + 0.123456, [(0, "k", 7, 60.0)] * 8 + [(60 / 7, "k", 7, 60.0)] * 3),
}


async def run(limiter: MemoryRateLimiter | RedisRateLimiter, start: float, steps: list[Step]) -> list[RateDecision]:
    clock = FakeClock(start)
    limiter._now = clock  # type: ignore[method-assign,assignment]
    decisions = []
    for advance, key, limit, period in steps:
        clock.now += advance
        decisions.append(await limiter.hit(key, limit, period))
    return decisions


def assert_same(expected: list[RateDecision], got: list[RateDecision]) -> None:
    assert [d.allowed for d in got] == [d.allowed for d in expected]
    assert [d.retry_after for d in got] == pytest.approx([d.retry_after for d in expected], abs=1.1e-3)


@pytest.mark.asyncio
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_same_decisions_as_memory(redis_url: str, scenario: str) -> None:
    start, steps = SCENARIOS[scenario]
    async with RedisRateLimiter(redis_url) as limiter:
        assert_same(await run(MemoryRateLimiter(), start, steps), await run(limiter, start, steps))


@pytest.mark.asyncio
async def test_same_decisions_as_memory_for_a_random_sequence(redis_url: str) -> None:
    rng = random.Random(20261126)
    steps: list[Step] = [
        (rng.choice([0, 0, 0, 0.001, 0.05, 0.3, 1.0, 2.5]), rng.choice(["a", "b", "c"]), limit, period)
        for _ in range(600)
        for limit, period in [rng.choice([(3, 1.0), (5, 2.0)])]
    ]
    async with RedisRateLimiter(redis_url) as limiter:
        expected = await run(MemoryRateLimiter(), 5000.0, steps)
        assert_same(expected, await run(limiter, 5000.0, steps))
    assert 0 < sum(d.allowed for d in expected) < len(expected)  # the sequence exercises both answers


@pytest.mark.asyncio
async def test_server_clock_burst_refusal_and_recovery(redis_url: str) -> None:
    async with RedisRateLimiter(redis_url) as limiter:
        decisions = [await limiter.hit("u", 5, 0.5) for _ in range(6)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert 0 < decisions[-1].retry_after <= 0.1  # one emission interval, less the time the burst took
        await asyncio.sleep(decisions[-1].retry_after + 0.01)
        assert (await limiter.hit("u", 5, 0.5)).allowed
        assert not (await limiter.hit("u", 5, 0.5)).allowed


@pytest.mark.asyncio
async def test_keys_carry_the_prefix_and_expire_with_their_budget(redis_url: str) -> None:
    async with RedisRateLimiter(redis_url, prefix="test:rl:") as limiter, aioredis.from_url(redis_url) as raw:
        await limiter.hit("user:1", 2, 0.2)
        assert await raw.keys("*") == [b"test:rl:user:1"]
        assert 0 < await raw.pttl("test:rl:user:1") <= 100  # the TAT is one interval (100 ms) ahead
        await limiter.hit("user:1", 2, 0.2)
        assert 50 < await raw.pttl("test:rl:user:1") <= 200  # two intervals, less the time between hits
        await asyncio.sleep(0.25)
        assert await raw.keys("*") == []  # a fully recovered budget leaves no state


@pytest.mark.asyncio
async def test_concurrent_hits_from_many_clients_are_counted_exactly(redis_url: str) -> None:
    limiters = [RedisRateLimiter(redis_url) for _ in range(4)]
    for limiter in limiters:
        await limiter.__aenter__()
    try:
        decisions = await asyncio.gather(*(limiters[i % 4].hit("hot", 50, 60.0) for i in range(200)))
    finally:
        for limiter in limiters:
            await limiter.__aexit__(None, None, None)
    assert sum(d.allowed for d in decisions) == 50
    assert all(d.retry_after > 0 for d in decisions if not d.allowed)


@pytest.mark.asyncio
async def test_the_script_is_loaded_again_after_the_server_forgets_it(redis_url: str) -> None:
    async with RedisRateLimiter(redis_url) as limiter, aioredis.from_url(redis_url) as raw:
        assert (await limiter.hit("k", 2, 60.0)).allowed
        await raw.script_flush()
        assert (await limiter.hit("k", 2, 60.0)).allowed
        assert not (await limiter.hit("k", 2, 60.0)).allowed
        assert (await limiter.health())["errors"] == 0


@pytest.mark.asyncio
async def test_enforce_limit_answers_rate_limited_with_retry_after(redis_url: str) -> None:
    async with RedisRateLimiter(redis_url) as limiter:
        await enforce_limit(limiter, "submit:user:1", 2)
        await enforce_limit(limiter, "submit:user:1", 2)
        with pytest.raises(ServiceError) as refused:
            await enforce_limit(limiter, "submit:user:1", 2)
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert refused.value.extra == {"retryAfter": 30}


@pytest.mark.asyncio
async def test_fails_open_while_redis_is_unreachable(closed_redis_url: str) -> None:
    async with RedisRateLimiter(closed_redis_url, failure_mode="open", cooldown_seconds=0) as limiter:
        decisions = [await limiter.hit("k", 1, 60.0) for _ in range(3)]
        health = await limiter.health()
    assert decisions == [RateDecision(True)] * 3
    assert health["ok"] is False and health["failureMode"] == "open"
    assert health["errors"] >= 4  # the start-up ping, three hits, this ping
    assert health["lastError"].startswith("ConnectionError")


@pytest.mark.asyncio
async def test_fails_closed_while_redis_is_unreachable(closed_redis_url: str) -> None:
    async with RedisRateLimiter(closed_redis_url, failure_mode="closed", closed_retry_after=2.0) as limiter:
        assert await limiter.hit("k", 100, 60.0) == RateDecision(False, 2.0)
        with pytest.raises(ServiceError) as refused:
            await enforce_limit(limiter, "k", 100)
    assert refused.value.extra == {"retryAfter": 2}


@pytest.mark.asyncio
async def test_after_a_failure_redis_is_skipped_for_the_cooldown(closed_redis_url: str) -> None:
    async with RedisRateLimiter(closed_redis_url, cooldown_seconds=60) as limiter:
        errors = (await limiter.health())["errors"]
        for _ in range(10):
            assert (await limiter.hit("k", 1, 60.0)).allowed
        health = await limiter.health()
    assert health["skipped"] == 10
    assert health["errors"] == errors + 1  # only the explicit health ping tried again


@pytest.mark.asyncio
async def test_recovers_when_redis_comes_back(redis_server: RedisServer, redis_url: str) -> None:
    if not redis_server.can_restart:
        pytest.skip("an external Redis cannot be stopped by the tests")
    async with RedisRateLimiter(redis_url, failure_mode="closed", cooldown_seconds=0) as limiter:
        assert (await limiter.hit("k", 1, 60.0)).allowed
        with redis_server.stopped():
            assert await limiter.hit("k", 1, 60.0) == RateDecision(False, 1.0)
            assert (await limiter.health())["ok"] is False
        # The restarted server lost the key and the script: the budget starts afresh, the script reloads.
        assert (await limiter.hit("k", 1, 60.0)).allowed
        assert not (await limiter.hit("k", 1, 60.0)).allowed
        assert (await limiter.health())["ok"] is True


def test_failure_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="failure_mode"):
        RedisRateLimiter("redis://127.0.0.1:1/0", failure_mode="maybe")  # type: ignore[arg-type]
