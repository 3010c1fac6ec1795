"""Event bus: the outbox relay publishes envelopes, consumers subscribe by group.

The in-process bus delivers synchronously to every subscribed handler, so ``publish`` returning means
every consumer applied the batch; the relay marks rows published only then (at-least-once).
The Kafka bus (``app.adapters.kafka_bus``) returns once the broker has the batch; its consumers run in
their own tasks, commit after the handler returns and may deliver an event more than once, so handlers
must be idempotent.

Two exceptions let callers tell "the infrastructure is down" from "this event is bad":
``BusUnavailableError`` (raised by ``publish``: retry later, the events are not at fault) and
``TransientHandlerError`` (raised by a handler: retry the batch later, never dead-letter it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, Self

from app.domain.events import EventEnvelope

__all__ = ["BusUnavailableError", "EventBus", "EventHandler", "MemoryEventBus", "TransientHandlerError"]

EventHandler = Callable[[Sequence[EventEnvelope]], Awaitable[None]]


class BusUnavailableError(Exception):
    """``publish`` could not reach the broker (down, timed out, no leader): nothing is wrong with the
    events, so they should wait (in the outbox) and be retried without counting towards poison."""


class TransientHandlerError(Exception):
    """Raised (or chained) by a handler when the failure is not the events' fault, e.g. the database is
    unreachable: the bus retries the batch with backoff for as long as it takes and never dead-letters it."""


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
