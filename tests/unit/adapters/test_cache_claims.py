"""MemoryCache claims (``add_if_absent``): single use until the TTL ends, never evicted early; health."""

from __future__ import annotations

import types

import pytest

from app.adapters import cache as cache_module
from app.adapters.cache import MemoryCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(cache_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.mark.asyncio
async def test_a_claim_is_granted_once_until_it_expires(clock: FakeClock) -> None:
    cache = MemoryCache()
    assert await cache.add_if_absent("nonce:1", 10)
    assert not await cache.add_if_absent("nonce:1", 10)
    assert await cache.add_if_absent("nonce:2", 10)
    clock.now += 9.999
    assert not await cache.add_if_absent("nonce:1", 10)
    clock.now += 0.001
    assert await cache.add_if_absent("nonce:1", 10)
    assert not await cache.add_if_absent("nonce:1", 10)


@pytest.mark.asyncio
async def test_claims_are_apart_from_cached_values() -> None:
    cache = MemoryCache()
    await cache.set("k", b"v", 60)
    assert await cache.add_if_absent("k", 60)  # a cached value is not a claim
    assert await cache.get("k") == b"v"
    await cache.delete("k")
    assert not await cache.add_if_absent("k", 60)  # deleting the value leaves the claim


@pytest.mark.asyncio
async def test_claims_are_never_evicted_to_make_room() -> None:
    cache = MemoryCache(max_entries=2)
    assert await cache.add_if_absent("nonce", 60)
    for i in range(100):
        await cache.set(f"k{i}", b"x", 60)
        await cache.add_if_absent(f"other{i}", 60)
    assert not await cache.add_if_absent("nonce", 60)


@pytest.mark.asyncio
async def test_expired_claims_are_swept(clock: FakeClock) -> None:
    cache = MemoryCache()
    for i in range(1000):
        await cache.add_if_absent(f"old{i}", 1)
    clock.now += 2
    for i in range(100):  # crosses the 1024th claim, which sweeps expired ones
        await cache.add_if_absent(f"new{i}", 1)
    assert not any(key.startswith("old") for key in cache._claims)


@pytest.mark.asyncio
@pytest.mark.parametrize("ttl", [0, -1.0, float("nan")])
async def test_a_claim_needs_a_positive_ttl(ttl: float) -> None:
    with pytest.raises(ValueError, match="positive TTL"):
        await MemoryCache().add_if_absent("k", ttl)


@pytest.mark.asyncio
async def test_closing_forgets_claims() -> None:
    cache = MemoryCache()
    async with cache:
        assert await cache.add_if_absent("k", 60)
    assert await cache.add_if_absent("k", 60)


@pytest.mark.asyncio
async def test_memory_adapters_report_health() -> None:
    from app.adapters.pubsub import MemoryPubSub
    from app.adapters.rate_limit import MemoryRateLimiter

    cache = MemoryCache()
    await cache.set("a", b"1", 60)
    assert await cache.health() == {"backend": "memory", "ok": True, "entries": 1}
    limiter = MemoryRateLimiter()
    await limiter.hit("k", 1, 60.0)
    assert await limiter.health() == {"backend": "memory", "ok": True, "keys": 1}
    pubsub = MemoryPubSub(buffer=1)
    async with pubsub.subscribe("c"):
        await pubsub.publish("c", b"1")
        await pubsub.publish("c", b"2")  # overflows: dropped
        assert await pubsub.health() == {
            "backend": "memory",
            "ok": True,
            "channels": 0,
            "subscribers": 0,
            "dropped": 1,
        }
