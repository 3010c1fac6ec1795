"""Event bus: the outbox relay publishes envelopes, consumers subscribe by group.

The in-process bus delivers synchronously to every subscribed handler, so ``publish`` returning means
every consumer applied the batch; the relay marks rows published only then (at-least-once).
The Kafka bus (``app.adapters.kafka_bus``) returns once the broker has the batch; its consumers run in
their own tasks, commit after the handler returns and may deliver an event more than once, so handlers
must be idempotent.

Failures fall in three kinds (:func:`classify_failure`), the same for the outbox relay and the Kafka
consumers:

- ``INFRASTRUCTURE``: ``BusUnavailableError`` (raised by ``publish``), ``TransientHandlerError`` (raised
  by a handler) or a database outage (``app.db.errors.is_database_outage``: locked, busy, away,
  deadlock). Not the event's fault: retried with backoff for as long as it lasts, never counted.
- ``MALFORMED``: the event can never be applied (undecodable payload, unknown type or schema version,
  ``MalformedEventError`` from a handler, e.g. it names a conversation that does not exist):
  dead-lettered at once and counted.
- ``EVENT``: anything else a handler raises (a bug that this event triggers): counted toward the
  event's attempts and dead-lettered after the configured number; the reconciler repairs an unlock
  that such an event failed to apply.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, Self

import msgspec

from app.db.errors import is_database_outage
from app.domain.events import EventEnvelope

__all__ = [
    "BusUnavailableError",
    "EventBus",
    "EventHandler",
    "FailureKind",
    "MalformedEventError",
    "MemoryEventBus",
    "TransientHandlerError",
    "classify_failure",
]

EventHandler = Callable[[Sequence[EventEnvelope]], Awaitable[None]]


class BusUnavailableError(Exception):
    """``publish`` could not reach the broker (down, timed out, no leader): nothing is wrong with the
    events, so they should wait (in the outbox) and be retried without counting towards poison."""


class TransientHandlerError(Exception):
    """Raised (or chained) by a handler when the failure is not the events' fault, e.g. the database is
    unreachable: the bus retries the batch with backoff for as long as it takes and never dead-letters it."""


class MalformedEventError(Exception):
    """Raised by a handler for an event that can never be applied (it names something that does not
    exist, or its payload does not fit its type): dead-letter it now, retrying cannot help."""


class FailureKind(enum.Enum):
    """Whose fault a failure is; see the module docstring."""

    INFRASTRUCTURE = "infrastructure"
    MALFORMED = "malformed"
    EVENT = "event"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def classify_failure(exc: BaseException, transient: tuple[type[BaseException], ...] = ()) -> FailureKind:
    """The kind of ``exc``, looking through what it was raised from; ``transient`` adds exception types
    that count as infrastructure (a broker client's connection errors)."""
    chain = _chain(exc)
    if any(isinstance(e, (BusUnavailableError, TransientHandlerError, *transient)) for e in chain):
        return FailureKind.INFRASTRUCTURE
    if is_database_outage(exc):
        return FailureKind.INFRASTRUCTURE
    if any(isinstance(e, MalformedEventError | msgspec.DecodeError) for e in chain):  # ValidationError too
        return FailureKind.MALFORMED
    return FailureKind.EVENT


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
