"""Fan-out of live status messages to subscribers (GraphQL subscriptions later; Redis across instances)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Protocol, Self

__all__ = ["MemoryPubSub", "PubSub"]


class PubSub(Protocol):
    """Channels of bytes. A subscriber that falls ``buffer`` messages behind is dropped, never waited on."""

    async def publish(self, channel: str, message: bytes) -> None: ...
    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...


class MemoryPubSub:
    """In-process channels with a bounded queue per subscriber."""

    def __init__(self, buffer: int = 64) -> None:
        self._subscribers: defaultdict[str, set[asyncio.Queue[bytes | None]]] = defaultdict(set)
        self._buffer = buffer

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

    async def publish(self, channel: str, message: bytes) -> None:
        for queue in list(self._subscribers.get(channel, ())):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # A slow reader loses its subscription rather than growing memory without bound.
                self._subscribers[channel].discard(queue)
                self._end(queue)

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
