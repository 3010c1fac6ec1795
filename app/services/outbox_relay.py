"""Outbox relay: moves committed events from ``connection_key_events`` onto the event bus.

Woken right after each commit (so delivery is immediate) and on a timer as a safety net (so events
committed by another process, or left behind by a crash, still drain).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Self

import structlog

from app.adapters.event_bus import BusUnavailableError, EventBus
from app.db.outbox_store import OutboxStore

__all__ = ["OutboxRelay"]

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0


class OutboxRelay:
    """Publishes unpublished rows in commit order; a failing event is retried with backoff and, after
    ``max_attempts``, set aside with its error so the events behind it keep flowing."""

    def __init__(
        self,
        store: OutboxStore,
        bus: EventBus,
        clock: Callable[[], datetime],
        batch_size: int = 200,
        poll_seconds: float = 1.0,
        max_attempts: int = 10,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._batch = batch_size
        self._poll = poll_seconds
        self._max_attempts = max_attempts
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._backoff = 0.0
        self._stopping = False
        self._stopped = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop(), name="outbox-relay")
        self.wake()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Let the drain in progress finish (its consumers' transactions commit or roll back cleanly),
        then stop; cancel only if it takes longer than the grace period. Unpublished rows stay in the
        outbox for the next start."""
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

    def wake(self) -> None:
        """Ask for a drain soon (called after every commit that wrote events)."""
        self._wake.set()

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
                # The broker is away, not the events at fault: nothing is marked failed; retry with backoff.
                log.warning("event bus unavailable; events wait in the outbox", error=str(exc))
                self._backoff = min(max(self._backoff * 2, 0.1), 30.0)
            except Exception:
                log.exception("outbox drain failed")
                self._backoff = min(max(self._backoff * 2, 0.1), 30.0)
            if self._backoff and not self._stopping:
                with contextlib.suppress(TimeoutError):  # a stop request cuts the backoff short
                    await asyncio.wait_for(self._stopped.wait(), self._backoff)

    async def drain(self) -> int:
        """Publish everything unpublished now; returns how many events were published."""
        published = 0
        async with self._lock:
            while not self._stopping and (rows := await self._store.unpublished(self._batch)):
                try:
                    await self._bus.publish([row.envelope for row in rows])
                except BusUnavailableError:
                    raise
                except Exception:  # noqa: BLE001 - isolate the failing event below
                    published += await self._publish_one_by_one(rows)
                    return published
                await self._store.mark_published([row.sequence for row in rows], self._clock())
                published += len(rows)
                self._backoff = 0.0
        return published

    async def _publish_one_by_one(self, rows: list) -> int:
        done = 0
        for row in rows:
            try:
                await self._bus.publish([row.envelope])
            except BusUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded on the row, retried later
                dead = row.publish_attempts + 1 >= self._max_attempts
                await self._store.mark_failed(row.sequence, f"{type(exc).__name__}: {exc}", dead, self._clock())
                log.error(
                    "event set aside after repeated failures" if dead else "event publish failed",
                    event_id=str(row.envelope.event_id),
                    event_type=row.envelope.event_type.value,
                    attempts=row.publish_attempts + 1,
                    error=type(exc).__name__,
                )
                if not dead:
                    # Order per conversation matters more than throughput: stop here and retry later.
                    self._backoff = min(0.1 * 2**row.publish_attempts, 30.0)
                    return done
                continue
            await self._store.mark_published([row.sequence], self._clock())
            done += 1
        return done
