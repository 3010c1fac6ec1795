"""MemoryPubSub: fan-out per channel, slow subscribers dropped, clean unsubscribe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.adapters.pubsub import MemoryPubSub


async def take(messages: AsyncIterator[bytes], n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        out.append(await asyncio.wait_for(anext(messages), 1))
    return out


async def drain(messages: AsyncIterator[bytes]) -> list[bytes]:
    """Everything until the stream ends (fails the test instead of hanging)."""

    async def collect() -> list[bytes]:
        return [m async for m in messages]

    return await asyncio.wait_for(collect(), 0.5)


@pytest.mark.asyncio
async def test_every_subscriber_of_a_channel_gets_every_message_in_order() -> None:
    async with MemoryPubSub() as pubsub:
        async with pubsub.subscribe("conv:1") as a, pubsub.subscribe("conv:1") as b, pubsub.subscribe("conv:2") as c:
            for i in range(5):
                await pubsub.publish("conv:1", b"m%d" % i)
            await pubsub.publish("conv:2", b"other")
            expected = [b"m0", b"m1", b"m2", b"m3", b"m4"]
            assert await take(a, 5) == expected
            assert await take(b, 5) == expected
            assert await take(c, 1) == [b"other"]


@pytest.mark.asyncio
async def test_publishing_without_subscribers_is_fine() -> None:
    pubsub = MemoryPubSub()
    await pubsub.publish("nobody", b"x")
    assert "nobody" not in pubsub._subscribers  # publishing does not create channels


@pytest.mark.asyncio
async def test_messages_before_subscribing_are_not_delivered() -> None:
    pubsub = MemoryPubSub()
    await pubsub.publish("c", b"early")
    async with pubsub.subscribe("c") as messages:
        await pubsub.publish("c", b"late")
        assert await take(messages, 1) == [b"late"]


@pytest.mark.asyncio
async def test_slow_subscriber_is_dropped_when_its_buffer_overflows() -> None:
    pubsub = MemoryPubSub(buffer=3)
    async with pubsub.subscribe("c") as slow, pubsub.subscribe("c") as fast:
        await pubsub.publish("c", b"1")
        await pubsub.publish("c", b"2")
        assert await take(fast, 2) == [b"1", b"2"]
        await pubsub.publish("c", b"3")
        await pubsub.publish("c", b"4")  # slow now holds 1,2,3 and overflows
        await pubsub.publish("c", b"5")
        received = await drain(slow)  # ends instead of waiting for more
        assert len(received) < 5
        assert received == sorted(received) and set(received) <= {b"1", b"2", b"3"}
        assert len(pubsub._subscribers["c"]) == 1
        assert await take(fast, 3) == [b"3", b"4", b"5"]  # the fast one is unaffected
        await pubsub.publish("c", b"6")
        assert await take(fast, 1) == [b"6"]


@pytest.mark.asyncio
async def test_a_subscriber_exactly_at_its_buffer_is_kept() -> None:
    pubsub = MemoryPubSub(buffer=2)
    async with pubsub.subscribe("c") as messages:
        await pubsub.publish("c", b"1")
        await pubsub.publish("c", b"2")
        assert await take(messages, 2) == [b"1", b"2"]
        await pubsub.publish("c", b"3")
        assert await take(messages, 1) == [b"3"]


@pytest.mark.asyncio
async def test_unsubscribe_cleans_up() -> None:
    pubsub = MemoryPubSub()
    async with pubsub.subscribe("c"):
        async with pubsub.subscribe("c"):
            assert len(pubsub._subscribers["c"]) == 2
        assert len(pubsub._subscribers["c"]) == 1
    assert "c" not in pubsub._subscribers


@pytest.mark.asyncio
async def test_unsubscribe_after_being_dropped_cleans_up() -> None:
    pubsub = MemoryPubSub(buffer=1)
    async with pubsub.subscribe("c") as messages:
        await pubsub.publish("c", b"1")
        await pubsub.publish("c", b"2")
        await drain(messages)
    assert "c" not in pubsub._subscribers


@pytest.mark.asyncio
async def test_unsubscribe_on_error_cleans_up() -> None:
    pubsub = MemoryPubSub()
    with pytest.raises(RuntimeError):
        async with pubsub.subscribe("c"):
            raise RuntimeError("client went away")
    assert "c" not in pubsub._subscribers


@pytest.mark.asyncio
async def test_closing_ends_every_subscription() -> None:
    pubsub = MemoryPubSub(buffer=4)
    async with pubsub.subscribe("a") as a, pubsub.subscribe("b") as b:
        await pubsub.publish("a", b"pending")
        await pubsub.__aexit__(None, None, None)
        assert await drain(a) == [b"pending"]
        assert await drain(b) == []


@pytest.mark.asyncio
async def test_closing_ends_a_subscription_with_a_full_buffer() -> None:
    # Regression: the end marker was dropped when the buffer was full, so the reader waited forever.
    pubsub = MemoryPubSub(buffer=2)
    async with pubsub.subscribe("c") as messages:
        await pubsub.publish("c", b"1")
        await pubsub.publish("c", b"2")
        await pubsub.__aexit__(None, None, None)
        received = await drain(messages)
        assert received and set(received) <= {b"1", b"2"}
