"""Outbox relay: moves committed events from ``connection_key_events`` onto the event bus.

Woken right after each commit (so delivery is immediate) and on a timer as a safety net (so events
committed by another process, or left behind by a crash, still drain).

Several instances may run: each round leases rows (``OutboxStore.lease``), so a row is published by one
instance at a time and its attempts are counted once. Failures are classified
(``app.adapters.event_bus.classify_failure``):

- infrastructure (broker away, database locked or away, ``TransientHandlerError``): never counted; the
  failing conversation's head row is held for a backoff (doubling up to ``max_backoff_seconds``) and only
  that conversation waits, the others keep flowing. A broker outage, or the same outage across several
  conversations in a row, backs off the whole relay instead (nothing could be delivered anyway).
- malformed or unknown events: dead-lettered at once (``dead_lettered_at``, ``last_error``), counted in
  :attr:`OutboxRelay.dead_lettered` and logged.
- any other handler failure: counted on the row; held with backoff; dead-lettered after ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Self

import structlog

from app.adapters.event_bus import BusUnavailableError, EventBus, FailureKind, classify_failure
from app.db.outbox_store import LeasedRow, OutboxStore

__all__ = ["OutboxRelay", "RelayOutage"]

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0
# Transient failures of this many different conversations in a row mean the outage is everyone's.
_SHARED_OUTAGE_AFTER = 3
_FIRST_BACKOFF = 0.1


class RelayOutage(Exception):
    """Delivery stopped for every conversation (the database is away): the relay backs off as a whole."""


def _instance_id() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class OutboxRelay:
    """Publishes unpublished rows, per conversation in commit order, leased so that several instances
    share the work (see the module docstring)."""

    def __init__(
        self,
        store: OutboxStore,
        bus: EventBus,
        clock: Callable[[], datetime],
        batch_size: int = 200,
        poll_seconds: float = 1.0,
        max_attempts: int = 10,
        *,
        max_backoff_seconds: float = 30.0,
        lease_seconds: float = 30.0,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._batch = batch_size
        self._poll = poll_seconds
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff_seconds
        self._lease = timedelta(seconds=lease_seconds)
        self.owner = owner or _instance_id()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._backoff = 0.0
        self._stopping = False
        self._stopped = asyncio.Event()
        # Consecutive infrastructure failures per blocked conversation (for its backoff); cleared on success.
        self._blocked: dict[uuid.UUID, int] = {}
        self.dead_lettered = 0
        """Events this instance set aside as malformed or unknown (or failing ``max_attempts`` times)."""
        self.infrastructure_failures = 0
        """Deliveries that failed for an outage and were retried (never counted against an event)."""

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop(), name="outbox-relay")
        self.wake()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Let the drain in progress finish (its consumers' transactions commit or roll back cleanly),
        then stop; cancel only if it takes longer than the grace period. Unpublished rows stay in the
        outbox for the next start (their leases run out, so any instance takes them)."""
        if self._task is None:
            return
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        done, _ = await asyncio.wait([self._task], timeout=SHUTDOWN_GRACE_SECONDS)
        if not done:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def stats(self) -> dict[str, Any]:
        """What ``/ready`` reports about the relay."""
        return {
            "running": self.running,
            "deadLettered": self.dead_lettered,
            "infrastructureFailures": self.infrastructure_failures,
            "blockedConversations": len(self._blocked),
        }

    def wake(self) -> None:
        """Ask for a drain soon (called after every commit that wrote events)."""
        self._wake.set()

    def _grow_backoff(self) -> None:
        self._backoff = min(max(self._backoff * 2, _FIRST_BACKOFF), self._max_backoff)

    async def _loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.drain()
            except BusUnavailableError as exc:
                # The broker is away, not the events at fault: nothing is counted; retry with backoff.
                log.warning("event bus unavailable; events wait in the outbox", error=str(exc))
                self._grow_backoff()
            except RelayOutage as exc:
                log.warning("delivery paused by an outage; events wait in the outbox", error=str(exc))
                self._grow_backoff()
            except Exception as exc:
                kind = classify_failure(exc)
                if kind is FailureKind.INFRASTRUCTURE:
                    log.warning("outbox unreachable; retrying", error=_error(exc))
                else:
                    log.exception("outbox drain failed")
                self._grow_backoff()
            if self._backoff and not self._stopping:
                with contextlib.suppress(TimeoutError):  # a stop request cuts the backoff short
                    await asyncio.wait_for(self._stopped.wait(), self._backoff)

    async def drain(self) -> int:
        """Publish everything this instance can lease now; returns how many events were published.
        Raises ``BusUnavailableError`` (broker away) or :class:`RelayOutage` (an outage everywhere)
        after giving its leases back or holding them for the backoff."""
        published = 0
        async with self._lock:
            while not self._stopping:
                now = self._clock()
                rows = await self._store.lease(self.owner, now, now + self._lease, self._batch)
                if not rows:
                    break
                published += await self._deliver(rows)
            self._backoff = 0.0
        return published

    async def _deliver(self, rows: list[LeasedRow]) -> int:
        readable = []
        for row in rows:
            if row.envelope is None:
                await self._dead_letter(row, row.malformed or "malformed event")
            else:
                readable.append(row)
        if not readable:
            return 0
        try:
            await self._bus.publish([row.envelope for row in readable if row.envelope is not None])
        except BusUnavailableError:
            await self._store.release([row.sequence for row in readable], self.owner)
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the failing conversations below
            if len(readable) == 1:
                return await self._one_failed(readable[0], exc)
            return await self._one_by_one(readable)
        await self._store.mark_published([row.sequence for row in readable], self._clock())
        for row in readable:
            self._blocked.pop(row.aggregate_id, None)
        return len(readable)

    async def _one_by_one(self, rows: list[LeasedRow]) -> int:
        done, shared_outage = 0, 0
        for index, row in enumerate(rows):
            try:
                assert row.envelope is not None  # only readable rows come here
                await self._bus.publish([row.envelope])
            except BusUnavailableError:
                await self._store.release([r.sequence for r in rows[index:]], self.owner)
                raise
            except Exception as exc:
                await self._one_failed(row, exc)
                if classify_failure(exc) is FailureKind.INFRASTRUCTURE:
                    shared_outage += 1
                    if shared_outage >= _SHARED_OUTAGE_AFTER:
                        # Not one conversation's trouble: stop trying each row and let the loop back off.
                        await self._store.release([r.sequence for r in rows[index + 1 :]], self.owner)
                        raise RelayOutage(_error(exc)) from exc
                continue
            shared_outage = 0
            await self._store.mark_published([row.sequence], self._clock())
            self._blocked.pop(row.aggregate_id, None)
            done += 1
        return done

    async def _one_failed(self, row: LeasedRow, exc: Exception) -> int:
        """Record one event's failure by kind; returns 0 (nothing published)."""
        kind = classify_failure(exc)
        event_type = row.envelope.event_type.value if row.envelope is not None else None
        if kind is FailureKind.MALFORMED:
            await self._dead_letter(row, _error(exc))
            return 0
        failures = self._blocked.get(row.aggregate_id, 0) + 1
        self._blocked[row.aggregate_id] = failures
        until = self._clock() + timedelta(seconds=min(_FIRST_BACKOFF * 2 ** (failures - 1), self._max_backoff))
        if kind is FailureKind.INFRASTRUCTURE:
            self.infrastructure_failures += 1
            await self._store.hold([row.sequence], self.owner, until)
            log.warning(
                "event delivery waits for an outage",
                event_id=str(row.event_id),
                event_type=event_type,
                conversation_id=str(row.aggregate_id),
                retries=failures,
                error=_error(exc),
            )
            return 0
        attempts = await self._store.mark_failed(row.sequence, self.owner, _error(exc), until)
        log.error(
            "event publish failed",
            event_id=str(row.event_id),
            event_type=event_type,
            attempts=attempts,
            error=type(exc).__name__,
        )
        if attempts is not None and attempts >= self._max_attempts:
            await self._dead_letter(row, f"failed {attempts} times: {_error(exc)}")
        return 0

    async def _dead_letter(self, row: LeasedRow, reason: str) -> None:
        await self._store.dead_letter(row.sequence, reason, self._clock())
        self._blocked.pop(row.aggregate_id, None)
        self.dead_lettered += 1
        log.error(
            "event dead-lettered",
            event_id=str(row.event_id),
            conversation_id=str(row.aggregate_id),
            dead_lettered_total=self.dead_lettered,
            reason=reason[:300],
        )
