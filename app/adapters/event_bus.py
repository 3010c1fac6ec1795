"""Event bus: the outbox relay publishes envelopes, consumers subscribe by group.

The in-process bus delivers synchronously to every subscribed handler, so ``publish`` returning means
every consumer applied the batch; the relay marks rows published only then (at-least-once).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, Self

from app.domain.events import EventEnvelope

__all__ = ["EventBus", "EventHandler", "MemoryEventBus"]

EventHandler = Callable[[Sequence[EventEnvelope]], Awaitable[None]]


class EventBus(Protocol):
    """Publish batches of envelopes; consumers register one handler per group."""

    def subscribe(self, group: str, handler: EventHandler) -> None: ...
    async def publish(self, envelopes: Sequence[EventEnvelope]) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...


class MemoryEventBus:
    """Delivers each batch to every group's handler in order; a handler's exception fails the publish."""

    def __init__(self) -> None:
        self._handlers: dict[str, EventHandler] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._handlers.clear()

    def subscribe(self, group: str, handler: EventHandler) -> None:
        if group in self._handlers:
            raise ValueError(f"consumer group {group!r} already subscribed")
        self._handlers[group] = handler

    async def publish(self, envelopes: Sequence[EventEnvelope]) -> None:
        for handler in self._handlers.values():
            await handler(envelopes)
