"""One consumer group on the events topic: poll, decode, hand the poll's events to the handler, commit.

Semantics (at-least-once, per-partition order):
- A poll (``getmany``, up to ``max_records``) becomes one handler call, records in partition order; the
  offsets are committed only after the handler returned, so a crash redelivers the batch.
- A record that cannot be read (malformed JSON or envelope, unknown event type, unsupported schema
  version, payload of the wrong shape) goes to the dead-letter topic at once, without the handler.
- Handler failures are classified like the outbox relay's (``event_bus.classify_failure``):
- An infrastructure failure (``TransientHandlerError``, one of ``transient_errors``, or a database outage:
  locked, busy, away, deadlock) is never the events' fault: the finished part of the poll is committed,
  the consumer seeks back to the rest (its offsets stay uncommitted) and retries after a backoff, forever.
- A malformed or unknown event (``MalformedEventError``, a payload that does not decode) is isolated by
  splitting the batch and goes to the dead-letter topic at once, without retries.
- Any other failure is retried with exponential backoff up to ``max_attempts``; then the batch is split
  in halves (each tried once, recursively, in order) until the failing events stand alone; a lone event
  that still fails ``max_attempts`` times goes to the dead-letter topic with the reason, and the rest go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from app.adapters.event_bus import EventHandler, FailureKind, classify_failure
from app.adapters.kafka_records import DeadLetter, decode_record
from app.domain.events import EventEnvelope

__all__ = ["GroupConsumer", "GroupStats", "PollProcessor", "PollProgress", "StopRequested"]

log = structlog.get_logger(__name__)

DeadLetterSink = Callable[[ConsumerRecord, DeadLetter, str], Awaitable[None]]
Backoff = Callable[[int], float]


class StopRequested(Exception):
    """The bus is stopping: the unfinished part of the poll stays uncommitted for the next start."""


class _RetryLater(Exception):
    """The handler reported a transient failure: seek back and retry the unfinished records later."""


class GroupStats:
    """What ``health()`` reports for one consumer group."""

    def __init__(self) -> None:
        self.running = False
        self.assigned_partitions = 0
        self.processed = 0
        self.dead_lettered = 0
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    def failed(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_at = datetime.now(UTC)

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "assignedPartitions": self.assigned_partitions,
            "processed": self.processed,
            "deadLettered": self.dead_lettered,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at.isoformat() if self.last_error_at else None,
        }


def _key(record: ConsumerRecord) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


class PollProgress:
    """The records of one poll and which of them are finished (handled or dead-lettered)."""

    def __init__(self, records: Sequence[ConsumerRecord]) -> None:
        self.records = list(records)
        self._finished: set[tuple[str, int, int]] = set()

    def finish(self, record: ConsumerRecord) -> None:
        self._finished.add(_key(record))

    @property
    def finished(self) -> int:
        return len(self._finished)

    def commit_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the offset after the finished records that have no unfinished one before them."""
        offsets: dict[TopicPartition, int] = {}
        blocked: set[TopicPartition] = set()
        for record in self.records:
            tp = TopicPartition(record.topic, record.partition)
            if tp in blocked:
                continue
            if _key(record) in self._finished:
                offsets[tp] = record.offset + 1
            else:
                blocked.add(tp)
        return offsets

    def rewind_offsets(self) -> dict[TopicPartition, int]:
        """Per partition with an unfinished record, the first unfinished offset (where to seek back to)."""
        offsets: dict[TopicPartition, int] = {}
        for record in self.records:
            tp = TopicPartition(record.topic, record.partition)
            if tp not in offsets and _key(record) not in self._finished:
                offsets[tp] = record.offset
        return offsets


class PollProcessor:
    """Turns one poll into handler calls and dead letters; knows nothing about the broker connection."""

    def __init__(
        self,
        *,
        group: str,
        handler: EventHandler,
        dead_letter: DeadLetterSink,
        max_attempts: int,
        backoff: Backoff,
        transient_errors: tuple[type[BaseException], ...],
        stopping: asyncio.Event,
        stats: GroupStats,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._group = group
        self._handler = handler
        self._dead_letter_sink = dead_letter
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._transient = transient_errors
        self._stopping = stopping
        self._stats = stats

    async def process(self, progress: PollProgress) -> None:
        """Handle every record of ``progress``; raises ``StopRequested`` or another exception with the
        finished records marked, so the caller can commit those and seek back to the rest."""
        readable: list[tuple[ConsumerRecord, EventEnvelope]] = []
        unreadable: list[tuple[ConsumerRecord, DeadLetter]] = []
        for record in progress.records:
            decoded = decode_record(record.value)
            if isinstance(decoded, DeadLetter):
                unreadable.append((record, decoded))
            else:
                readable.append((record, decoded))
        if unreadable:
            results = await asyncio.gather(
                *(self._dead_letter(progress, record, dead) for record, dead in unreadable), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        if readable:
            await self._deliver(progress, readable, self._max_attempts)

    async def _deliver(
        self, progress: PollProgress, items: list[tuple[ConsumerRecord, EventEnvelope]], attempts: int
    ) -> None:
        envelopes = [envelope for _, envelope in items]
        error: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                await self._handler(envelopes)
            except Exception as exc:
                kind = classify_failure(exc, self._transient)
                if kind is FailureKind.INFRASTRUCTURE:
                    raise _RetryLater(f"{type(exc).__name__}: {exc}") from exc
                error = exc
                if kind is FailureKind.MALFORMED:  # retrying cannot help: isolate it and set it aside now
                    break
                log.warning(
                    "event handler failed",
                    group=self._group,
                    events=len(items),
                    attempt=attempt,
                    max_attempts=attempts,
                    error=f"{type(exc).__name__}: {exc}",
                )
                if attempt < attempts:
                    await self._pause(self._backoff(attempt))
                continue
            for record, _ in items:
                progress.finish(record)
            self._stats.processed += len(items)
            return
        assert error is not None
        self._stats.failed(error)
        if len(items) == 1:
            if classify_failure(error, self._transient) is FailureKind.MALFORMED:
                reason = f"malformed: {type(error).__name__}: {error}"
            else:
                reason = f"handler failed {attempts} times: {type(error).__name__}: {error}"
            await self._dead_letter(progress, items[0][0], DeadLetter(reason, attempts))
            return
        # Isolate the failing events: halves in order (so each partition's order holds), each tried once;
        # a lone event gets the full number of attempts before it is dead-lettered.
        middle = len(items) // 2
        for half in (items[:middle], items[middle:]):
            await self._deliver(progress, half, 1 if len(half) > 1 else self._max_attempts)

    async def _dead_letter(self, progress: PollProgress, record: ConsumerRecord, dead: DeadLetter) -> None:
        await self._dead_letter_sink(record, dead, self._group)
        progress.finish(record)
        self._stats.dead_lettered += 1
        log.error(
            "event dead-lettered",
            group=self._group,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=dead.reason,
        )

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._stopping.is_set():
            raise StopRequested


class GroupConsumer:
    """The task behind one ``subscribe(group, handler)``: (re)connects, polls and commits until stopped."""

    def __init__(
        self,
        *,
        group: str,
        processor: PollProcessor,
        make_consumer: Callable[[], AIOKafkaConsumer],
        prepare: Callable[[], Awaitable[None]],
        poll_timeout_ms: int,
        max_records: int,
        backoff: Backoff,
        stopping: asyncio.Event,
        stats: GroupStats,
    ) -> None:
        self._group = group
        self._processor = processor
        self._make_consumer = make_consumer
        self._prepare = prepare
        self._poll_timeout_ms = poll_timeout_ms
        self._max_records = max_records
        self._backoff = backoff
        self._stopping = stopping
        self._stats = stats

    async def run(self) -> None:
        failures = 0
        try:
            while not self._stopping.is_set():
                consumer = self._make_consumer()
                try:
                    await self._prepare()
                    await consumer.start()
                except Exception as exc:  # noqa: BLE001 - broker down or unreachable: retry with backoff
                    failures += 1
                    self._stats.failed(exc)
                    log.warning("consumer could not start", group=self._group, error=self._stats.last_error)
                    with contextlib.suppress(Exception):
                        await consumer.stop()
                    await self._idle(self._backoff(failures))
                    continue
                failures = 0
                self._stats.running = True
                try:
                    if await self._consume(consumer):
                        return
                except Exception as exc:  # never let the group task die: log it and reconnect
                    self._stats.failed(exc)
                    log.exception("consumer failed; reconnecting", group=self._group)
                finally:
                    self._stats.running = False
                    self._stats.assigned_partitions = 0
                    with contextlib.suppress(Exception):
                        await consumer.stop()
                failures += 1
                await self._idle(self._backoff(failures))
        finally:
            self._stats.running = False

    async def _consume(self, consumer: AIOKafkaConsumer) -> bool:
        """Poll until stopped (returns True) or the consumer breaks (returns False: start a new one)."""
        failures = 0
        while not self._stopping.is_set():
            try:
                polled = await consumer.getmany(timeout_ms=self._poll_timeout_ms, max_records=self._max_records)
            except KafkaError as exc:
                self._stats.failed(exc)
                log.warning("consumer poll failed", group=self._group, error=self._stats.last_error)
                return False
            self._stats.assigned_partitions = len(consumer.assignment())
            if not polled:
                continue
            progress = PollProgress([record for records in polled.values() for record in records])
            try:
                await self._processor.process(progress)
            except StopRequested:
                await self._commit(consumer, progress.commit_offsets())
                return True
            except Exception as exc:  # noqa: BLE001 - transient handler failure, dead-letter topic unreachable
                failures += 1
                self._stats.failed(exc)
                log.warning(
                    "poll will be retried",
                    group=self._group,
                    error=self._stats.last_error,
                    finished=progress.finished,
                    polled=len(progress.records),
                )
                await self._commit(consumer, progress.commit_offsets())
                self._rewind(consumer, progress.rewind_offsets())
                await self._idle(self._backoff(failures))
                continue
            failures = 0
            await self._commit(consumer, progress.commit_offsets())
        return True

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:  # rebalanced or broker gone: the new owner (or we) will see them again
            self._stats.failed(exc)
            log.warning("offset commit failed; events will be redelivered", group=self._group, error=str(exc))

    def _rewind(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        assigned = consumer.assignment()
        for tp, offset in offsets.items():
            if tp in assigned:
                consumer.seek(tp, offset)

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
