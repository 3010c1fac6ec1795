"""The reconciler: a loop in the process that repairs what the event path may have dropped.

Every ``outbox.reconcile_interval_seconds`` it

1. applies passed attempts whose unlock was never applied (conversation not UNLOCKED, no moderator's
   lock, no LOCK covering the attempt: none decided since it, nor one in force when it was submitted;
   submitted more than ``republish_after_seconds`` ago), through
   the unlock orchestrator with an event id derived from the attempt, so it is applied once however
   often it runs and a late original event changes nothing;
2. republishes outbox rows still unpublished after ``republish_after_seconds`` that nobody holds (never
   picked up, or leased by an instance that died) and that are next in line for their conversation:
   gives their leases back, drains them now, and reports those that were published;
3. prunes published events and processed-event ids older than ``retention_days``.

It logs what it fixed (counts and ids, never personal data). Every instance may run it: each step is
idempotent, and leases keep two instances from publishing one row at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Self

import msgspec
import structlog

from app.adapters.event_bus import FailureKind, classify_failure
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.profile_store import ProfileStore
from app.domain.events import EventType, QuizCompleted
from app.domain.quiz import UnlockState
from app.services.outbox_relay import OutboxRelay
from app.services.unlock_orchestrator import UnlockOrchestrator
from app.settings import OutboxSettings

__all__ = ["ReconcileReport", "Reconciler", "repair_event_id"]

log = structlog.get_logger(__name__)

_BATCH = 200


def repair_event_id(attempt_id: uuid.UUID) -> uuid.UUID:
    """The id of the QUIZ_COMPLETED the reconciler replays for an attempt: the same every time."""
    return uuid.uuid5(attempt_id, "reconciler:quiz-completed")


class ReconcileReport(msgspec.Struct, frozen=True):
    """What one run fixed."""

    unlocked_attempts: list[uuid.UUID]
    republished_events: list[uuid.UUID]
    pruned_events: int
    pruned_processed: int


class Reconciler:
    """Runs :meth:`run_once` every ``reconcile_interval_seconds`` while entered (0: never)."""

    def __init__(
        self,
        settings: OutboxSettings,
        outbox: OutboxStore,
        profiles: ProfileStore,
        orchestrator: UnlockOrchestrator,
        relay: OutboxRelay,
        clock: Callable[[], datetime],
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._profiles = profiles
        self._orchestrator = orchestrator
        self._relay = relay
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.runs = 0

    async def __aenter__(self) -> Self:
        if self._settings.reconcile_interval_seconds > 0:
            self._task = asyncio.create_task(self._loop(), name="outbox-reconciler")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._settings.reconcile_interval_seconds)
            if self._stop.is_set():
                return
            try:
                await self.run_once()
            except Exception as exc:
                if classify_failure(exc) is FailureKind.INFRASTRUCTURE:
                    log.warning("reconciler run skipped: database or bus unavailable", error=type(exc).__name__)
                else:
                    log.exception("reconciler run failed")

    async def run_once(self) -> ReconcileReport:
        """One pass of the three repairs; returns (and logs, when anything was fixed) what it did."""
        now = self._clock()
        stale = now - timedelta(seconds=self._settings.republish_after_seconds)
        unlocked = await self._apply_lost_unlocks(stale)
        republished = await self._republish_orphans(stale, now)
        events, processed = await self._outbox.prune(now - timedelta(days=self._settings.retention_days))
        self.runs += 1
        report = ReconcileReport(unlocked, republished, events, processed)
        if unlocked or republished or events or processed:
            log.info(
                "reconciler fixed",
                unlocked_attempts=[str(a) for a in unlocked],
                republished_events=[str(e) for e in republished],
                pruned_events=events,
                pruned_processed=processed,
            )
        return report

    async def _apply_lost_unlocks(self, submitted_before: datetime) -> list[uuid.UUID]:
        applied = []
        for row in await self._profiles.passed_but_locked(submitted_before, _BATCH):
            attempt_id = uuid.UUID(str(row["id"]))
            conversation_id = uuid.UUID(str(row["conversation_id"]))
            event = QuizCompleted(
                attempt_id=attempt_id,
                key_id=uuid.UUID(str(row["connection_key_id"])),
                conversation_id=conversation_id,
                requester_id=uuid.UUID(str(row["requester_id"])),
                target_id=uuid.UUID(str(row["target_id"])),
                score=row["score"],
                passed=True,
                unlock_state=UnlockState.UNLOCKED,
                retry_available_at=None,
                completed_at=row["submitted_at"],
            )
            envelope = msgspec.structs.replace(
                new_envelope(EventType.QUIZ_COMPLETED, conversation_id, event, self._clock()),
                event_id=repair_event_id(attempt_id),
            )
            status = await self._orchestrator.apply(envelope)
            if status is not None and status.unlock_state is UnlockState.UNLOCKED:
                applied.append(attempt_id)
        return applied

    async def _republish_orphans(self, older_than: datetime, now: datetime) -> list[uuid.UUID]:
        orphans = await self._outbox.orphans(older_than, now, _BATCH)
        if not orphans:
            return []
        sequences = [row["sequence"] for row in orphans]
        await self._outbox.release_expired(sequences, now)
        await self._relay.drain()
        # Only what did go out: a row may fail again (held for its backoff) or be dead-lettered.
        published = await self._outbox.published_among(sequences)
        return [uuid.UUID(str(row["event_id"])) for row in orphans if row["sequence"] in published]
