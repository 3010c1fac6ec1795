"""MemoryCache: per-entry TTL and an LRU bound."""

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
    # Replace the module's view of `time` only; the event loop keeps the real clock.
    monkeypatch.setattr(cache_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.mark.asyncio
async def test_get_set_delete() -> None:
    async with MemoryCache() as cache:
        assert await cache.get("a") is None
        await cache.set("a", b"1", 60)
        assert await cache.get("a") == b"1"
        await cache.set("a", b"2", 60)
        assert await cache.get("a") == b"2"
        await cache.delete("a")
        assert await cache.get("a") is None
        await cache.delete("never-set")  # no error


@pytest.mark.asyncio
async def test_entries_expire_after_their_ttl(clock: FakeClock) -> None:
    cache = MemoryCache()
    await cache.set("short", b"s", 10)
    await cache.set("long", b"l", 100)
    clock.now += 9.999
    assert await cache.get("short") == b"s"
    clock.now += 0.001  # exactly at expiry
    assert await cache.get("short") is None
    assert await cache.get("long") == b"l"
    clock.now += 90
    assert await cache.get("long") is None


@pytest.mark.asyncio
async def test_setting_again_renews_the_ttl(clock: FakeClock) -> None:
    cache = MemoryCache()
    await cache.set("k", b"1", 10)
    clock.now += 8
    await cache.set("k", b"2", 10)
    clock.now += 8
    assert await cache.get("k") == b"2"


@pytest.mark.asyncio
async def test_zero_ttl_is_never_served(clock: FakeClock) -> None:
    cache = MemoryCache()
    await cache.set("k", b"v", 0)
    assert await cache.get("k") is None


@pytest.mark.asyncio
async def test_least_recently_used_entry_is_evicted() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", b"a", 60)
    await cache.set("b", b"b", 60)
    assert await cache.get("a") == b"a"  # a is now the most recently used
    await cache.set("c", b"c", 60)
    assert await cache.get("b") is None
    assert await cache.get("a") == b"a"
    assert await cache.get("c") == b"c"


@pytest.mark.asyncio
async def test_overwriting_counts_as_use() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", b"a", 60)
    await cache.set("b", b"b", 60)
    await cache.set("a", b"A", 60)
    await cache.set("c", b"c", 60)
    assert await cache.get("b") is None
    assert await cache.get("a") == b"A"


@pytest.mark.asyncio
async def test_bound_holds_under_many_writes() -> None:
    cache = MemoryCache(max_entries=50)
    for i in range(500):
        await cache.set(f"k{i}", str(i).encode(), 60)
    present = [i for i in range(500) if await cache.get(f"k{i}") is not None]
    assert present == list(range(450, 500))


@pytest.mark.asyncio
async def test_closing_forgets_everything() -> None:
    cache = MemoryCache()
    async with cache:
        await cache.set("a", b"a", 60)
    assert await cache.get("a") is None
