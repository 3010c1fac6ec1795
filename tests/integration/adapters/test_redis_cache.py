"""RedisCache against a real Redis: the Cache contract, TTLs, claims shared by instances, and the cache
bypassed (never an error) while Redis is away."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from app.adapters.cache import CacheUnavailable, RedisCache
from tests import redis_server as redis_fixtures
from tests.redis_server import RedisServer

# The Redis fixtures (assigned, not imported, so the test parameters of the same names read plainly).
redis_server = redis_fixtures.redis_server
redis_url = redis_fixtures.redis_url
closed_redis_url = redis_fixtures.closed_redis_url


@pytest.mark.asyncio
async def test_get_set_delete(redis_url: str) -> None:
    async with RedisCache(redis_url) as cache:
        assert await cache.get("a") is None
        await cache.set("a", b"1", 60)
        assert await cache.get("a") == b"1"
        await cache.set("a", b"\x00\xff binary", 60)
        assert await cache.get("a") == b"\x00\xff binary"
        await cache.delete("a")
        assert await cache.get("a") is None
        await cache.delete("never-set")  # no error
        assert (await cache.health())["errors"] == 0


@pytest.mark.asyncio
async def test_entries_expire_after_their_ttl(redis_url: str) -> None:
    async with RedisCache(redis_url, prefix="t:") as cache, aioredis.from_url(redis_url) as raw:
        await cache.set("short", b"s", 0.1)
        await cache.set("long", b"l", 60)
        assert 0 < await raw.pttl("t:short") <= 100
        assert 59_000 < await raw.pttl("t:long") <= 60_000
        await asyncio.sleep(0.15)
        assert await cache.get("short") is None
        assert await cache.get("long") == b"l"


@pytest.mark.asyncio
async def test_zero_ttl_is_never_served_and_replaces_an_older_value(redis_url: str) -> None:
    async with RedisCache(redis_url) as cache:
        await cache.set("k", b"old", 60)
        await cache.set("k", b"new", 0)
        assert await cache.get("k") is None


@pytest.mark.asyncio
async def test_keys_carry_the_prefix(redis_url: str) -> None:
    async with RedisCache(redis_url, prefix="ck:test:") as cache, aioredis.from_url(redis_url) as raw:
        await cache.set("quiz:1", b"v", 60)
        assert await cache.add_if_absent("nonce:1", 60)
        assert sorted(await raw.keys("*")) == [b"ck:test:claim:nonce:1", b"ck:test:quiz:1"]


@pytest.mark.asyncio
async def test_instances_share_values(redis_url: str) -> None:
    async with RedisCache(redis_url) as one, RedisCache(redis_url) as two:
        await one.set("k", b"v", 60)
        assert await two.get("k") == b"v"
        await two.delete("k")
        assert await one.get("k") is None


@pytest.mark.asyncio
async def test_a_claim_is_granted_once_across_instances(redis_url: str) -> None:
    async with RedisCache(redis_url) as one, RedisCache(redis_url) as two:
        results = await asyncio.gather(*(cache.add_if_absent("nonce:x", 60) for cache in [one, two] * 25))
        assert results.count(True) == 1
        assert await one.get("nonce:x") is None  # claims are apart from cached values
        await one.delete("nonce:x")
        assert not await two.add_if_absent("nonce:x", 60)


@pytest.mark.asyncio
async def test_a_claim_is_granted_again_after_its_ttl(redis_url: str) -> None:
    async with RedisCache(redis_url) as cache:
        assert await cache.add_if_absent("n", 0.1)
        assert not await cache.add_if_absent("n", 0.1)
        await asyncio.sleep(0.15)
        assert await cache.add_if_absent("n", 0.1)
        with pytest.raises(ValueError, match="positive TTL"):
            await cache.add_if_absent("n", 0)


@pytest.mark.asyncio
async def test_the_cache_is_bypassed_while_redis_is_unreachable(closed_redis_url: str) -> None:
    async with RedisCache(closed_redis_url, cooldown_seconds=0) as cache:
        await cache.set("k", b"v", 60)
        assert await cache.get("k") is None
        await cache.delete("k")
        health = await cache.health()
    assert health["ok"] is False
    assert health["errors"] == 5  # start-up ping, set, get, delete, this ping
    assert health["lastError"].startswith("ConnectionError")


@pytest.mark.asyncio
async def test_claims_fail_closed_by_default(closed_redis_url: str) -> None:
    async with RedisCache(closed_redis_url) as cache:
        with pytest.raises(CacheUnavailable):
            await cache.add_if_absent("nonce", 60)


@pytest.mark.asyncio
async def test_claims_fail_open_to_this_process(closed_redis_url: str) -> None:
    async with RedisCache(closed_redis_url, claim_failure="open") as cache:
        assert await cache.add_if_absent("nonce", 60)
        assert not await cache.add_if_absent("nonce", 60)  # still single use within this instance


@pytest.mark.asyncio
async def test_failures_are_logged_without_values(closed_redis_url: str) -> None:
    with capture_logs() as logs:
        async with RedisCache(closed_redis_url, cooldown_seconds=0) as cache:
            await cache.set("key-name", b"SECRET-VALUE", 60)
            await cache.get("key-name")
    assert [entry["event"] for entry in logs] == ["redis unavailable"]  # once per outage, not per call
    assert "SECRET-VALUE" not in repr(logs)


@pytest.mark.asyncio
async def test_recovers_when_redis_comes_back(redis_server: RedisServer, redis_url: str) -> None:
    if not redis_server.can_restart:
        pytest.skip("an external Redis cannot be stopped by the tests")
    async with RedisCache(redis_url, cooldown_seconds=0) as cache:
        await cache.set("k", b"v", 60)
        with redis_server.stopped():
            assert await cache.get("k") is None
            await cache.set("k", b"lost", 60)
            assert (await cache.health())["ok"] is False
        assert await cache.get("k") is None  # the restarted server kept nothing (no persistence here)
        await cache.set("k", b"again", 60)
        assert await cache.get("k") == b"again"
        assert (await cache.health())["ok"] is True


def test_claim_failure_is_checked() -> None:
    with pytest.raises(ValueError, match="claim_failure"):
        RedisCache("redis://127.0.0.1:1/0", claim_failure="sometimes")  # type: ignore[arg-type]
