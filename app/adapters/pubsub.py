"""Fan-out of live status messages to subscribers: within one process, or across instances through Redis.

Messages are live status, not a log. A subscriber that falls ``buffer`` messages behind is dropped (its
stream ends) rather than waited on, and with Redis, messages published while an instance is disconnected
are lost. The database is the source of truth: a client whose stream ends or (re)starts reads the current
state from the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol, Self

import structlog
from redis.asyncio.connection import AbstractConnection

from app.adapters.redis_support import REDIS_ERRORS, BackendHealth, describe_error, redis_client

__all__ = ["MemoryPubSub", "PubSub", "RedisPubSub"]

log = structlog.get_logger(__name__)


class PubSub(Protocol):
    """Channels of bytes. A subscriber that falls ``buffer`` messages behind is dropped, never waited on."""

    async def publish(self, channel: str, message: bytes) -> None: ...
    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]: ...
    async def health(self) -> dict[str, Any]:
        """The ``/ready`` entry: at least ``backend`` and ``ok``."""
        ...

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...


class MemoryPubSub:
    """In-process channels with a bounded queue per subscriber."""

    def __init__(self, buffer: int = 64) -> None:
        self._subscribers: defaultdict[str, set[asyncio.Queue[bytes | None]]] = defaultdict(set)
        self._buffer = buffer
        self.dropped = 0
        """Subscribers dropped so far for falling ``buffer`` messages behind."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for queues in self._subscribers.values():
            for queue in queues:
                self._end(queue)
        self._subscribers.clear()

    @staticmethod
    def _end(queue: asyncio.Queue[bytes | None]) -> None:
        # The end marker must get in even when the buffer is full: drop the oldest message for it.
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(None)

    def _fan_out(self, channel: str, message: bytes) -> None:
        for queue in list(self._subscribers.get(channel, ())):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # A slow reader loses its subscription rather than growing memory without bound.
                self._subscribers[channel].discard(queue)
                self._end(queue)
                self.dropped += 1

    def channels(self) -> set[str]:
        """Channels with at least one subscriber."""
        return {channel for channel, queues in self._subscribers.items() if queues}

    async def publish(self, channel: str, message: bytes) -> None:
        self._fan_out(channel, message)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(self._buffer)
        self._subscribers[channel].add(queue)

        async def messages() -> AsyncIterator[bytes]:
            while (message := await queue.get()) is not None:
                yield message

        try:
            yield messages()
        finally:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[channel]

    async def health(self) -> dict[str, Any]:
        return {
            "backend": "memory",
            "ok": True,
            "channels": len(self.channels()),
            "subscribers": sum(len(queues) for queues in self._subscribers.values()),
            "dropped": self.dropped,
        }


def _chunks(items: Sequence[str], size: int = 512) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RedisPubSub:
    """Channels shared by every instance through Redis pub/sub.

    ``publish`` sends to the Redis channel ``<prefix><channel>``. Each process holds ONE listening
    connection, whatever the number of subscribers: a Redis channel is subscribed while at least one local
    subscriber wants it and unsubscribed when the last one leaves (or is dropped). A reader task fans each
    message out to the local subscribers' bounded queues exactly as :class:`MemoryPubSub` does, so a slow
    reader is dropped and never slows the others or Redis.

    Redis unreachable: the listener reconnects with jittered exponential backoff (``reconnect_min`` to
    ``reconnect_max`` seconds) and resubscribes every wanted channel; subscriptions stay open meanwhile
    and messages published in the gap are lost. A connection that stays silent is probed with PING every
    ``ping_interval`` seconds and replaced when the PING is not answered. A publish that Redis refuses is
    logged, counted and delivered to this process's own subscribers only (never raised: the state change
    is already committed). ``subscribe`` waits up to ``timeout`` for Redis to confirm the subscription,
    so a message published after it returns is received (while Redis is reachable).

    Use as an async context manager: the listener runs between enter and exit, and entering waits up to
    ``timeout`` for its first connection (never fails: with Redis away it keeps trying in the background).
    """

    def __init__(
        self,
        url: str,
        *,
        buffer: int = 64,
        prefix: str = "ck:ps:",
        timeout: float = 0.5,
        ping_interval: float = 5.0,
        reconnect_min: float = 0.05,
        reconnect_max: float = 2.0,
        cooldown_seconds: float = 1.0,
    ) -> None:
        self._redis = redis_client(url, timeout=timeout, name="ck-pubsub")
        self._local = MemoryPubSub(buffer)
        self._prefix = prefix
        self._prefix_bytes = prefix.encode()
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._publish_health = BackendHealth("pubsub.publish", cooldown_seconds=cooldown_seconds)
        self._listen_health = BackendHealth("pubsub.listen", cooldown_seconds=0.0)
        self._runner: asyncio.Task[None] | None = None
        self._conn: AbstractConnection | None = None  # the listening connection, while it works
        self._listening = asyncio.Event()  # set while ``_conn`` is
        self._wake = asyncio.Event()  # subscriptions changed (or a PING is due): the writer syncs
        self._remote: set[str] = set()  # channels SUBSCRIBE was sent for on the current connection
        self._pending: dict[str, int] = {}  # channel -> SUBSCRIBE replies still to come
        self._confirmed: dict[str, asyncio.Event] = {}  # channel -> set once Redis confirmed it
        self._ping_due = False
        self._closing = asyncio.Event()
        self.connects = 0
        """Listening connections made so far (1 + reconnects)."""
        self.publish_fallbacks = 0
        """Messages delivered only to this process because Redis refused the publish."""

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("RedisPubSub can be entered once")
        self._runner = asyncio.create_task(self._run(), name="redis-pubsub-listener")
        with contextlib.suppress(TimeoutError):  # Redis away at start-up: serve anyway, connect later
            async with asyncio.timeout(self._timeout):
                await self._listening.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # The listener is asked to stop rather than cancelled: on Python 3.11 a cancellation can be lost
        # inside redis-py (asyncio.wait_for), so cancelling is only the fallback of _finish.
        self._closing.set()
        self._wake.set()
        if self._conn is not None:
            await self._conn.disconnect(nowait=True)  # a read in progress ends at once
        if self._runner is not None:
            await _finish(self._runner, grace=self._timeout + 1.0)
        await self._local.__aexit__()
        await self._redis.aclose()

    async def publish(self, channel: str, message: bytes) -> None:
        if self._publish_health.available():
            try:
                await self._redis.publish(self._prefix + channel, message)
            except REDIS_ERRORS as exc:
                self._publish_health.failed("publish", exc)
            else:
                self._publish_health.succeeded()
                return
        self.publish_fallbacks += 1
        await self._local.publish(channel, message)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[bytes]]:
        if self._runner is None or self._runner.done() or self._closing.is_set():
            raise RuntimeError("RedisPubSub is not open: use it as an async context manager")
        try:
            async with self._local.subscribe(channel) as messages:
                confirmed = self._confirmed.get(channel)
                if confirmed is None:
                    confirmed = self._confirmed[channel] = asyncio.Event()
                    if channel in self._remote and channel not in self._pending:
                        confirmed.set()
                self._wake.set()
                if self._conn is not None and not confirmed.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._timeout):
                            await confirmed.wait()
                yield messages
        finally:
            if channel not in self._remote and not self._local._subscribers.get(channel):
                self._confirmed.pop(channel, None)  # never subscribed in Redis (an outage): nothing to undo
            self._wake.set()  # the writer unsubscribes the channel if this was its last subscriber

    async def health(self) -> dict[str, Any]:
        """``backend``, ``ok`` (the listener is connected), local ``channels``, ``subscribers`` and
        ``dropped`` counts, ``connects``, ``publishFallbacks``, ``errors`` and the last error."""
        listen, publish = self._listen_health, self._publish_health
        last = max((h for h in (listen, publish) if h.last_error_at), key=lambda h: h.last_error_at or 0, default=None)
        local = await self._local.health()
        return {
            "backend": "redis",
            "ok": self._conn is not None,
            "channels": local["channels"],
            "subscribers": local["subscribers"],
            "dropped": local["dropped"],
            "connects": self.connects,
            "publishFallbacks": self.publish_fallbacks,
            "errors": listen.errors + publish.errors,
            "lastError": last.last_error if last else None,
            "lastErrorAt": last.last_error_at if last else None,
        }

    # The listener: one connection at a time, a reader (this task) and a writer (subscription changes).

    async def _run(self) -> None:
        delay = self._reconnect_min
        while not self._closing.is_set():
            conn = self._redis.connection_pool.make_connection()
            writer: asyncio.Task[None] | None = None
            connected_at = None
            try:
                await conn.connect()
                if self._closing.is_set():
                    return  # (the finally disconnects)
                self._connected(conn)
                connected_at = time.monotonic()
                writer = asyncio.create_task(self._write(conn), name="redis-pubsub-writer")
                await self._read(conn, writer)
            except REDIS_ERRORS as exc:
                if not self._closing.is_set():
                    self._listen_health.failed("listen", exc)
            except Exception as exc:  # a bug must not end fan-out for good: log it and reconnect
                log.exception("pub/sub listener failed", error=describe_error(exc))
            finally:
                self._disconnected()
                if writer is not None:
                    self._wake.set()  # the writer sees its connection gone and returns
                    await _finish(writer, grace=self._timeout + 0.5)
                await conn.disconnect(nowait=True)
            if connected_at is not None and time.monotonic() - connected_at > self._reconnect_max:
                delay = self._reconnect_min  # it worked for a while: start backing off afresh
            with contextlib.suppress(TimeoutError):  # back off, unless closing
                async with asyncio.timeout(delay * random.uniform(0.5, 1.0)):
                    await self._closing.wait()
            delay = min(delay * 2, self._reconnect_max)

    def _connected(self, conn: AbstractConnection) -> None:
        self._conn = conn
        self._listening.set()
        self.connects += 1
        self._listen_health.succeeded()
        self._forget_subscriptions()
        self._wake.set()

    def _disconnected(self) -> None:
        self._conn = None
        self._listening.clear()
        self._forget_subscriptions()

    def _forget_subscriptions(self) -> None:
        self._remote.clear()
        self._pending.clear()
        self._ping_due = False
        for event in self._confirmed.values():
            event.clear()

    async def _read(self, conn: AbstractConnection, writer: asyncio.Task[None]) -> None:
        awaiting_pong = False
        while not writer.done() and not self._closing.is_set():
            response = await conn.read_response(timeout=self._ping_interval, push_request=True)
            if response is None:  # silent for a whole interval: is the connection still there?
                if awaiting_pong:
                    raise TimeoutError("Redis did not answer PING on the pub/sub connection")
                awaiting_pong = self._ping_due = True
                self._wake.set()
                continue
            awaiting_pong = False
            self._dispatch(response)
            await asyncio.sleep(0)  # let subscribers drain their queues between messages
        if not self._closing.is_set():
            raise ConnectionError("the pub/sub connection failed while (un)subscribing")

    def _dispatch(self, response: object) -> None:
        # Pushes are [kind, channel, payload-or-count]; PONG is "PONG" or [b"pong", b""].
        if not isinstance(response, list) or len(response) != 3:
            return
        kind, name, payload = response
        if not isinstance(name, bytes) or not name.startswith(self._prefix_bytes):
            return
        channel = name[len(self._prefix_bytes) :].decode()
        if kind == b"message":
            self._local._fan_out(channel, payload)
            if channel in self._remote and not self._local._subscribers.get(channel):
                self._wake.set()  # its last subscriber was just dropped
        elif kind == b"subscribe":
            left = self._pending.get(channel, 0) - 1
            if left > 0:
                self._pending[channel] = left
                return
            self._pending.pop(channel, None)
            confirmed = self._confirmed.get(channel)
            if confirmed is not None and channel in self._remote:
                confirmed.set()

    async def _write(self, conn: AbstractConnection) -> None:
        try:
            while True:
                await self._wake.wait()
                if self._conn is not conn:
                    return  # the connection ended (or the pub/sub is closing)
                self._wake.clear()
                await self._sync(conn)
        except Exception as exc:
            if self._conn is not conn:
                return  # the connection is being replaced already (a write raced its teardown)
            if isinstance(exc, REDIS_ERRORS):
                self._listen_health.failed("subscribe", exc)
            else:
                log.exception("pub/sub subscription change failed", error=describe_error(exc))
            await conn.disconnect(nowait=True)  # the reader sees the connection end and reconnects

    async def _sync(self, conn: AbstractConnection) -> None:
        """Bring the connection's subscriptions to the channels local subscribers want."""
        wanted = self._local.channels()
        add = sorted(wanted - self._remote)
        drop = sorted(self._remote - wanted)
        for channel in [c for c in self._confirmed if c not in wanted]:
            del self._confirmed[channel]
        # Bookkeeping first, then the commands: this task is the only writer, so it stays in order.
        self._remote.update(add)
        self._remote.difference_update(drop)
        for channel in add:
            self._pending[channel] = self._pending.get(channel, 0) + 1
        for chunk in _chunks(add):
            await conn.send_command("SUBSCRIBE", *(self._prefix + c for c in chunk), check_health=False)
        for chunk in _chunks(drop):
            await conn.send_command("UNSUBSCRIBE", *(self._prefix + c for c in chunk), check_health=False)
        if self._ping_due:
            self._ping_due = False
            await conn.send_command("PING", check_health=False)


async def _finish(task: asyncio.Task[None], grace: float) -> None:
    """Wait up to ``grace`` seconds for ``task`` to end by itself, then cancel it until it does (again and
    again: Python 3.11's asyncio.wait_for, used inside redis-py, can lose a cancellation)."""
    await asyncio.wait([task], timeout=grace)
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=grace)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", task=task.get_name(), error=describe_error(task.exception()))
