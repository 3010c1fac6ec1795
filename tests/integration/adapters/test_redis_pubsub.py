"""RedisPubSub against a real Redis: fan-out across instances, one listening connection per process, slow
subscribers dropped, 1,000 subscribers joining and leaving, and a Redis restart mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from app.adapters.pubsub import RedisPubSub
from tests import redis_server as redis_fixtures
from tests.redis_server import RedisServer

# The Redis fixtures (assigned, not imported, so the test parameters of the same names read plainly).
redis_server = redis_fixtures.redis_server
redis_url = redis_fixtures.redis_url
closed_redis_url = redis_fixtures.closed_redis_url

P = "ck:ps:"  # the default channel prefix


async def take(messages: AsyncIterator[bytes], n: int, timeout: float = 2.0) -> list[bytes]:
    return [await asyncio.wait_for(anext(messages), timeout) for _ in range(n)]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def numsub(raw: aioredis.Redis, *channels: str) -> dict[str, int]:
    return {name.decode()[len(P) :]: count for name, count in await raw.pubsub_numsub(*(P + c for c in channels))}


async def pubsub_clients(raw: aioredis.Redis) -> list[dict[str, str]]:
    return [c for c in await raw.client_list() if c.get("name") == "ck-pubsub" and "P" in c["flags"]]


@pytest.mark.asyncio
async def test_messages_reach_subscribers_of_other_instances_in_order(redis_url: str) -> None:
    async with RedisPubSub(redis_url) as one, RedisPubSub(redis_url) as two:
        async with one.subscribe("conv:1") as a, two.subscribe("conv:1") as b, two.subscribe("conv:2") as c:
            for i in range(5):
                await one.publish("conv:1", b"m%d" % i)  # no sleep: subscribe returned once Redis confirmed
            await two.publish("conv:2", b"other")
            expected = [b"m0", b"m1", b"m2", b"m3", b"m4"]
            assert await take(a, 5) == expected
            assert await take(b, 5) == expected
            assert await take(c, 1) == [b"other"]
        health = await one.health()
    assert health["ok"] is True and health["backend"] == "redis" and health["publishFallbacks"] == 0


@pytest.mark.asyncio
async def test_one_listening_connection_per_process(redis_url: str) -> None:
    async with RedisPubSub(redis_url) as one, aioredis.from_url(redis_url) as raw:
        async with contextlib.AsyncExitStack() as stack:
            for i in range(50):
                await stack.enter_async_context(one.subscribe(f"c{i % 10}"))
            clients = await pubsub_clients(raw)
            assert len(clients) == 1
            assert clients[0]["sub"] == "10"  # each channel once, whatever its local subscribers
            assert (await one.health())["subscribers"] == 50


@pytest.mark.asyncio
async def test_a_subscriber_that_never_reads_is_dropped_and_the_others_keep_receiving(redis_url: str) -> None:
    async with RedisPubSub(redis_url, buffer=8) as listener, RedisPubSub(redis_url) as publisher:
        async with aioredis.from_url(redis_url) as raw, listener.subscribe("c") as slow:
            async with listener.subscribe("c") as fast:
                received: list[bytes] = []

                async def read_fast() -> None:
                    async for message in fast:
                        received.append(message)
                        if len(received) == 2000:
                            return

                reader = asyncio.create_task(read_fast())
                for i in range(2000):
                    await publisher.publish("c", b"%d" % i)
                await asyncio.wait_for(reader, 5)
                assert received == [b"%d" % i for i in range(2000)]
                slow_got = [m async for m in slow]  # ended: dropped, not waited on
                assert len(slow_got) <= 8 and slow_got == sorted(slow_got, key=int)
                assert listener._local._subscribers["c"] == {next(iter(listener._local._subscribers["c"]))}
                health = await listener.health()
                assert health["dropped"] == 1 and health["subscribers"] == 1
                # Redis never buffered for us: the reader kept up although one subscriber never read.
                (client,) = await pubsub_clients(raw)
                assert int(client["omem"]) < 64 * 1024


@pytest.mark.asyncio
async def test_memory_stays_flat_while_a_subscriber_never_reads(redis_url: str) -> None:
    payload = b"x" * 1024
    async with RedisPubSub(redis_url, buffer=16) as listener, RedisPubSub(redis_url) as publisher:
        async with listener.subscribe("c"), listener.subscribe("c") as reading:
            reader = asyncio.create_task(_count(reading, 3000))
            for _ in range(200):  # warm up pools and buffers before measuring
                await publisher.publish("c", payload)
            tracemalloc.start()
            try:
                before, _ = tracemalloc.get_traced_memory()
                for _ in range(2800):  # 2.8 MB published, all of it to a subscriber that never reads
                    await publisher.publish("c", payload)
                assert await asyncio.wait_for(reader, 5) == 3000
                after, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert after - before < 256 * 1024
            assert (await listener.health())["dropped"] == 1


async def _count(messages: AsyncIterator[bytes], n: int) -> int:
    received = 0
    async for _ in messages:
        received += 1
        if received == n:
            break
    return received


@pytest.mark.asyncio
async def test_a_dropped_last_subscriber_releases_the_redis_channel(redis_url: str) -> None:
    async with RedisPubSub(redis_url, buffer=2) as listener, RedisPubSub(redis_url) as publisher:
        async with aioredis.from_url(redis_url) as raw, listener.subscribe("c") as never_read:
            for i in range(3):
                await publisher.publish("c", b"%d" % i)

            async def unsubscribed() -> bool:
                return (await numsub(raw, "c")) == {"c": 0}

            await eventually(unsubscribed)  # although the subscriber has not left
            assert [m async for m in never_read] == [b"1"]  # the end marker replaced the oldest message


@pytest.mark.asyncio
async def test_a_thousand_subscribers_join_and_leave(redis_url: str) -> None:
    async with RedisPubSub(redis_url) as listener, RedisPubSub(redis_url) as publisher:
        async with aioredis.from_url(redis_url) as raw:
            channels = [f"conv:{i}" for i in range(250)]
            joined = asyncio.Event()
            ready = 0

            async def subscriber(i: int) -> bytes:
                nonlocal ready
                async with listener.subscribe(channels[i % 250]) as messages:
                    ready += 1
                    if ready == 1000:
                        joined.set()
                    await joined.wait()
                    return await asyncio.wait_for(anext(messages), 5)

            tasks = [asyncio.create_task(subscriber(i)) for i in range(1000)]
            await asyncio.wait_for(joined.wait(), 10)
            assert set((await numsub(raw, *channels)).values()) == {1}
            assert len(await pubsub_clients(raw)) == 1
            for channel in channels:
                await publisher.publish(channel, channel.encode())
            results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
            assert results == [channels[i % 250].encode() for i in range(1000)]

            async def all_released() -> bool:
                return await raw.pubsub_channels(P + "*") == []

            await eventually(all_released)
            assert set((await numsub(raw, *channels)).values()) == {0}
            assert not listener._local._subscribers and not listener._remote
            assert not listener._confirmed and not listener._pending
            assert (await listener.health())["subscribers"] == 0


@pytest.mark.asyncio
async def test_subscribers_that_leave_abruptly_are_cleaned_up(redis_url: str) -> None:
    async with RedisPubSub(redis_url) as listener, aioredis.from_url(redis_url) as raw:

        async def subscriber(i: int) -> None:
            async with listener.subscribe(f"c{i % 7}") as messages:
                await anext(messages)  # never arrives: cancelled below

        tasks = [asyncio.create_task(subscriber(i)) for i in range(100)]

        async def all_subscribed() -> bool:
            return set((await numsub(raw, *(f"c{i}" for i in range(7)))).values()) == {1}

        await eventually(all_subscribed)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        async def all_released() -> bool:
            return await raw.pubsub_channels(P + "*") == []

        await eventually(all_released)
        assert not listener._local._subscribers and not listener._confirmed


@pytest.mark.asyncio
async def test_a_redis_restart_mid_stream_then_new_messages_are_delivered(
    redis_server: RedisServer, redis_url: str
) -> None:
    if not redis_server.can_restart:
        pytest.skip("an external Redis cannot be restarted by the tests")
    async with (
        RedisPubSub(redis_url, reconnect_min=0.02, reconnect_max=0.2) as listener,
        RedisPubSub(redis_url, cooldown_seconds=0) as publisher,
        listener.subscribe("conv:1") as messages,
    ):
        await publisher.publish("conv:1", b"before")
        assert await take(messages, 1) == [b"before"]
        redis_server.restart()

        async def resubscribed() -> bool:
            async with aioredis.from_url(redis_url) as raw:
                return (await numsub(raw, "conv:1")) == {"conv:1": 1}

        await eventually(resubscribed)
        assert listener.connects == 2
        await publisher.publish("conv:1", b"after")  # the publisher's pooled connection was replaced too
        assert await take(messages, 1) == [b"after"]  # the same stream: subscribers never noticed
        health = await listener.health()
        assert health["ok"] is True and health["errors"] >= 1 and health["lastError"]


@pytest.mark.asyncio
async def test_while_redis_is_away_publishes_reach_local_subscribers_only(
    redis_server: RedisServer, redis_url: str
) -> None:
    if not redis_server.can_restart:
        pytest.skip("an external Redis cannot be stopped by the tests")
    async with (
        RedisPubSub(redis_url, reconnect_min=0.02, reconnect_max=0.1, cooldown_seconds=0) as one,
        RedisPubSub(redis_url, reconnect_min=0.02, reconnect_max=0.1, cooldown_seconds=0) as two,
        one.subscribe("c") as mine,
        two.subscribe("c") as theirs,
    ):
        with redis_server.stopped():
            await eventually(lambda: _not_ok(one))
            await one.publish("c", b"during")  # never raises
            assert await take(mine, 1) == [b"during"]
            assert one.publish_fallbacks == 1
            # A subscription made during the outage is served once Redis is back.
            late_subscription = two.subscribe("late")
            late = await late_subscription.__aenter__()
        try:
            await eventually(lambda: _subscribed(redis_url, c=2, late=1))  # both listeners are back
            await one.publish("c", b"after")
            await one.publish("late", b"hello")
            assert await take(theirs, 1) == [b"after"]  # "during" was lost for the other instance
            assert await take(mine, 1) == [b"after"]
            assert await take(late, 1) == [b"hello"]
        finally:
            await late_subscription.__aexit__(None, None, None)


async def _not_ok(pubsub: RedisPubSub) -> bool:
    return not (await pubsub.health())["ok"]


async def _subscribed(url: str, **expected: int) -> bool:
    async with aioredis.from_url(url) as raw:
        return await numsub(raw, *expected) == expected


@pytest.mark.asyncio
async def test_an_unanswered_ping_replaces_the_connection(redis_url: str) -> None:
    async with (
        RedisPubSub(redis_url, ping_interval=0.1, reconnect_min=0.02, reconnect_max=0.1) as listener,
        RedisPubSub(redis_url) as publisher,
        listener.subscribe("c") as messages,
        aioredis.from_url(redis_url) as raw,
    ):
        await raw.execute_command("CLIENT", "PAUSE", "600")  # Redis goes silent, connections stay open
        await eventually(lambda: _reconnected(listener), timeout=5)
        await eventually(lambda: _subscribed(redis_url, c=1))
        await publisher.publish("c", b"after")
        assert await take(messages, 1) == [b"after"]


async def _reconnected(pubsub: RedisPubSub) -> bool:
    return pubsub.connects >= 2 and (await pubsub.health())["ok"]


@pytest.mark.asyncio
async def test_closing_ends_every_subscription(redis_url: str) -> None:
    pubsub = RedisPubSub(redis_url, buffer=4)
    async with pubsub:
        async with pubsub.subscribe("a") as a, pubsub.subscribe("b") as b:
            await pubsub.publish("a", b"pending")
            assert await take(a, 1) == [b"pending"]
            await pubsub.__aexit__(None, None, None)
            assert [m async for m in a] == []
            assert [m async for m in b] == []
        with pytest.raises(RuntimeError, match="not open"):
            async with pubsub.subscribe("c"):
                pass


@pytest.mark.asyncio
async def test_starts_and_serves_locally_while_redis_is_unreachable(closed_redis_url: str) -> None:
    started = time.monotonic()
    async with RedisPubSub(closed_redis_url, timeout=0.2, reconnect_min=0.02) as pubsub:
        assert time.monotonic() - started < 1.0  # entering waits at most ``timeout`` for Redis
        async with pubsub.subscribe("c") as messages:
            await pubsub.publish("c", b"local")
            assert await take(messages, 1) == [b"local"]
        health = await pubsub.health()
    assert health["ok"] is False and health["errors"] >= 1 and health["publishFallbacks"] == 1
