"""RedisPubSub without a server: which SUBSCRIBE/UNSUBSCRIBE commands the one listening connection gets
(a channel is subscribed once, whatever its local subscribers), and when a subscription counts as confirmed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from app.adapters.pubsub import RedisPubSub


class FakeConnection:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    async def send_command(self, *args: Any, check_health: bool = True) -> None:
        assert check_health is False  # a health check would read a reply the reader task owns
        self.sent.append(args)


@pytest_asyncio.fixture
async def pubsub() -> AsyncIterator[tuple[RedisPubSub, FakeConnection]]:
    # Never entered, so nothing connects; the client is closed at the end.
    ps = RedisPubSub("redis://127.0.0.1:1/0", buffer=2, prefix="t:")
    conn = FakeConnection()
    ps._connected(conn)  # type: ignore[arg-type]
    yield ps, conn
    await ps._redis.aclose()


def ack(kind: str, channel: str, count: int = 1) -> list[Any]:
    return [kind.encode(), b"t:" + channel.encode(), count]


@pytest.mark.asyncio
async def test_a_channel_is_subscribed_once_and_unsubscribed_with_its_last_subscriber(pubsub: Any) -> None:
    ps, conn = pubsub
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(ps._local.subscribe("a"))
        await stack.enter_async_context(ps._local.subscribe("a"))
        await stack.enter_async_context(ps._local.subscribe("b"))
        await ps._sync(conn)
        assert conn.sent == [("SUBSCRIBE", "t:a", "t:b")]
        await ps._sync(conn)
        assert len(conn.sent) == 1  # nothing changed, nothing sent
        assert first is not None
    await ps._sync(conn)
    assert conn.sent[1:] == [("UNSUBSCRIBE", "t:a", "t:b")]
    assert ps._remote == set()


@pytest.mark.asyncio
async def test_many_channels_are_subscribed_in_chunks(pubsub: Any) -> None:
    ps, conn = pubsub
    async with contextlib.AsyncExitStack() as stack:
        for i in range(1200):
            await stack.enter_async_context(ps._local.subscribe(f"c{i:04d}"))
        await ps._sync(conn)
        assert [len(args) - 1 for args in conn.sent] == [512, 512, 176]
        assert all(args[0] == "SUBSCRIBE" for args in conn.sent)


@pytest.mark.asyncio
async def test_confirmation_waits_for_the_last_subscribe_reply(pubsub: Any) -> None:
    ps, conn = pubsub
    confirmed = ps._confirmed["a"] = asyncio.Event()
    async with ps._local.subscribe("a"):
        await ps._sync(conn)  # SUBSCRIBE a
    await ps._sync(conn)  # UNSUBSCRIBE a
    async with ps._local.subscribe("a"):
        confirmed = ps._confirmed["a"] = asyncio.Event()
        await ps._sync(conn)  # SUBSCRIBE a again
        assert [args[0] for args in conn.sent] == ["SUBSCRIBE", "UNSUBSCRIBE", "SUBSCRIBE"]
        ps._dispatch(ack("subscribe", "a"))  # the first SUBSCRIBE's reply: not this one's
        assert not confirmed.is_set()
        ps._dispatch(ack("unsubscribe", "a", 0))
        ps._dispatch(ack("subscribe", "a"))
        assert confirmed.is_set()
        assert ps._pending == {}


@pytest.mark.asyncio
async def test_messages_fan_out_to_local_subscribers_only_for_their_channel(pubsub: Any) -> None:
    ps, conn = pubsub
    async with ps._local.subscribe("a") as a, ps._local.subscribe("b") as b:
        await ps._sync(conn)
        ps._dispatch([b"message", b"t:a", b"for a"])
        ps._dispatch([b"message", b"other:a", b"not ours"])
        ps._dispatch([b"pong", b""])
        ps._dispatch(b"PONG")
        assert await anext(a) == b"for a"
        ps._dispatch([b"message", b"t:b", b"for b"])
        assert await anext(b) == b"for b"


@pytest.mark.asyncio
async def test_a_dropped_last_subscriber_gets_its_channel_unsubscribed(pubsub: Any) -> None:
    ps, conn = pubsub
    async with ps._local.subscribe("a") as messages:
        await ps._sync(conn)
        ps._wake.clear()
        for i in range(3):  # buffer=2: the third overflows
            ps._dispatch([b"message", b"t:a", b"%d" % i])
        assert ps._wake.is_set()  # the writer is asked to unsubscribe at once, not when the reader leaves
        await ps._sync(conn)
        assert conn.sent[-1] == ("UNSUBSCRIBE", "t:a")
        assert [m async for m in messages] == [b"1"]  # the end marker took the oldest message's place
        assert ps._local.dropped == 1


@pytest.mark.asyncio
async def test_reconnecting_forgets_what_the_old_connection_had(pubsub: Any) -> None:
    ps, conn = pubsub
    async with ps._local.subscribe("a"):
        ps._confirmed["a"] = asyncio.Event()
        await ps._sync(conn)
        ps._dispatch(ack("subscribe", "a"))
        assert ps._confirmed["a"].is_set()
        ps._disconnected()
        assert not ps._confirmed["a"].is_set() and ps._remote == set() and ps._conn is None
        fresh = FakeConnection()
        ps._connected(fresh)  # type: ignore[arg-type]
        await ps._sync(fresh)
        assert fresh.sent == [("SUBSCRIBE", "t:a")]  # everything wanted is subscribed again


@pytest.mark.asyncio
async def test_subscribing_needs_an_open_pubsub() -> None:
    ps = RedisPubSub("redis://127.0.0.1:1/0")
    with pytest.raises(RuntimeError, match="not open"):
        async with ps.subscribe("a"):
            pass
    await ps._redis.aclose()
