"""The consumer's poll processing without a broker: commit points, dead letters, isolating a poison event."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from app.adapters.event_bus import MalformedEventError, TransientHandlerError
from app.adapters.kafka_consumer import GroupStats, PollProcessor, PollProgress, StopRequested
from app.adapters.kafka_records import DeadLetter, encode_envelope
from app.db.errors import DatabaseUnavailable
from app.domain.events import SCHEMA_VERSION, EventEnvelope, EventType, KeyCreated

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)


def envelope(n: int) -> EventEnvelope:
    payload = KeyCreated(
        key_id=uuid.UUID(int=n),
        conversation_id=uuid.UUID(int=n % 2),
        requester_id=uuid.UUID(int=1),
        target_id=uuid.UUID(int=2),
        expires_at=NOW,
    )
    return EventEnvelope(
        event_id=uuid.UUID(int=1000 + n),
        event_type=EventType.KEY_CREATED,
        aggregate_id=uuid.UUID(int=n % 2),
        occurred_at=NOW,
        schema_version=SCHEMA_VERSION,
        payload=msgspec.Raw(msgspec.json.encode(payload)),
    )


def record(partition: int, offset: int, value: bytes | None) -> ConsumerRecord:
    return ConsumerRecord(
        topic="events",
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=len(value or b""),
        headers=[],
    )


def records(count: int) -> list[ConsumerRecord]:
    """``count`` events: even ones on partition 0, odd ones on partition 1 (as a poll returns them)."""
    return [record(n % 2, n // 2, encode_envelope(envelope(n))) for n in (*range(0, count, 2), *range(1, count, 2))]


class Handler:
    def __init__(self, poison: set[uuid.UUID] | None = None, error: Exception | None = None) -> None:
        self.calls: list[list[int]] = []
        self.accepted: list[int] = []
        self.poison = poison or set()
        self.error = error

    async def __call__(self, envelopes: Sequence[EventEnvelope]) -> None:
        numbers = [e.event_id.int - 1000 for e in envelopes]
        self.calls.append(numbers)
        if self.error is not None:
            raise self.error
        if self.poison & {e.event_id for e in envelopes}:
            raise LookupError("no such conversation")
        self.accepted.extend(numbers)


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.dead: list[tuple[int, int, DeadLetter]] = []
        self.fail = fail

    async def __call__(self, rec: ConsumerRecord, dead: DeadLetter, group: str) -> None:
        if self.fail:
            raise ConnectionError("dead-letter topic unreachable")
        self.dead.append((rec.partition, rec.offset, dead))


def processor(handler: Handler, sink: Sink, stopping: asyncio.Event | None = None, attempts: int = 2) -> PollProcessor:
    return PollProcessor(
        group="unlock",
        handler=handler,
        dead_letter=sink,
        max_attempts=attempts,
        backoff=lambda _: 0.0,
        transient_errors=(TransientHandlerError, ConnectionError),
        stopping=stopping or asyncio.Event(),
        stats=GroupStats(),
    )


def test_commit_and_rewind_points_follow_the_finished_prefix_of_each_partition() -> None:
    polled = [record(0, 10, b""), record(0, 11, b""), record(0, 12, b""), record(1, 5, b""), record(1, 6, b"")]
    progress = PollProgress(polled)
    progress.finish(polled[0])
    progress.finish(polled[2])  # after an unfinished one: not committable yet
    progress.finish(polled[3])
    progress.finish(polled[4])
    assert progress.commit_offsets() == {TopicPartition("events", 0): 11, TopicPartition("events", 1): 7}
    assert progress.rewind_offsets() == {TopicPartition("events", 0): 11}


@pytest.mark.asyncio
async def test_a_good_poll_is_one_handler_call_in_partition_order() -> None:
    handler, sink = Handler(), Sink()
    progress = PollProgress(records(6))
    await processor(handler, sink).process(progress)
    assert handler.calls == [[0, 2, 4, 1, 3, 5]] and sink.dead == []
    assert progress.commit_offsets() == {TopicPartition("events", 0): 3, TopicPartition("events", 1): 3}


@pytest.mark.asyncio
async def test_unreadable_records_are_dead_lettered_without_the_handler() -> None:
    handler, sink = Handler(), Sink()
    polled = [record(0, 0, b"{oops"), record(0, 1, encode_envelope(envelope(4))), record(0, 2, None)]
    progress = PollProgress(polled)
    await processor(handler, sink).process(progress)
    assert handler.calls == [[4]]
    assert [(offset, dead.reason.split(":")[0]) for _, offset, dead in sink.dead] == [
        (0, "malformed"),
        (2, "malformed"),
    ]
    assert progress.commit_offsets() == {TopicPartition("events", 0): 3}


@pytest.mark.asyncio
async def test_a_poison_event_is_isolated_by_halving_and_dead_lettered_after_its_attempts() -> None:
    handler, sink = Handler(poison={envelope(4).event_id}), Sink()
    progress = PollProgress(records(8))  # [0, 2, 4, 6, 1, 3, 5, 7]
    await processor(handler, sink, attempts=2).process(progress)
    assert handler.calls == [
        [0, 2, 4, 6, 1, 3, 5, 7],
        [0, 2, 4, 6, 1, 3, 5, 7],  # the whole poll, max_attempts times
        [0, 2, 4, 6],  # halves, once each
        [0, 2],
        [4, 6],
        [4],
        [4],  # alone: max_attempts times, then dead-lettered
        [6],
        [1, 3, 5, 7],
    ]
    assert handler.accepted == [0, 2, 6, 1, 3, 5, 7]  # partition 0 stays in order around the hole
    ((partition, offset, dead),) = sink.dead
    assert (partition, offset, dead.attempts) == (0, 2, 2)
    assert dead.reason == "handler failed 2 times: LookupError: no such conversation"
    assert progress.commit_offsets() == {TopicPartition("events", 0): 4, TopicPartition("events", 1): 4}


@pytest.mark.asyncio
@pytest.mark.parametrize("error", [TransientHandlerError("db down"), ConnectionError("refused")])
async def test_a_transient_failure_is_never_dead_lettered(error: Exception) -> None:
    handler, sink = Handler(error=error), Sink()
    progress = PollProgress(records(4))
    with pytest.raises(Exception, match=str(error)):
        await processor(handler, sink).process(progress)
    assert len(handler.calls) == 1 and sink.dead == [] and progress.finished == 0
    assert progress.rewind_offsets() == {TopicPartition("events", 0): 0, TopicPartition("events", 1): 0}


@pytest.mark.asyncio
async def test_a_failure_caused_by_a_transient_one_counts_as_transient() -> None:
    try:
        raise TransientHandlerError("pool exhausted")
    except TransientHandlerError as cause:
        error = RuntimeError("could not apply batch")
        error.__cause__ = cause
    handler, sink = Handler(error=error), Sink()
    with pytest.raises(Exception, match="could not apply batch"):
        await processor(handler, sink).process(PollProgress(records(2)))
    assert len(handler.calls) == 1 and sink.dead == []


@pytest.mark.asyncio
async def test_stopping_during_a_retry_leaves_the_poll_unfinished() -> None:
    stopping = asyncio.Event()
    stopping.set()
    handler, sink = Handler(error=RuntimeError("boom")), Sink()
    progress = PollProgress(records(2))
    with pytest.raises(StopRequested):
        await processor(handler, sink, stopping=stopping, attempts=5).process(progress)
    assert len(handler.calls) == 1 and progress.finished == 0


@pytest.mark.asyncio
async def test_an_unreachable_dead_letter_topic_leaves_the_record_unfinished() -> None:
    handler, sink = Handler(), Sink(fail=True)
    polled = [record(0, 0, b"{oops"), record(0, 1, encode_envelope(envelope(2)))]
    progress = PollProgress(polled)
    with pytest.raises(ConnectionError):
        await processor(handler, sink).process(progress)
    assert progress.commit_offsets() == {} and progress.rewind_offsets() == {TopicPartition("events", 0): 0}


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        processor(Handler(), Sink(), attempts=0)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "error",
    [
        sqlite3.OperationalError("database is locked"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        DatabaseUnavailable(),
    ],
)
async def test_a_database_outage_is_retried_never_dead_lettered_and_not_committed(error: Exception) -> None:
    # The transient tuple here names no database error: the consumer recognises outages itself.
    handler, sink = Handler(error=error), Sink()
    progress = PollProgress(records(4))
    with pytest.raises(Exception, match=type(error).__name__):  # the consumer's retry-later signal
        await processor(handler, sink, attempts=5).process(progress)
    assert len(handler.calls) == 1 and sink.dead == [] and progress.finished == 0
    assert progress.commit_offsets() == {}


class MalformedHandler(Handler):
    async def __call__(self, envelopes: Sequence[EventEnvelope]) -> None:
        numbers = [e.event_id.int - 1000 for e in envelopes]
        self.calls.append(numbers)
        if envelope(4).event_id in {e.event_id for e in envelopes}:
            raise MalformedEventError("conversation does not exist")
        self.accepted.extend(numbers)


@pytest.mark.asyncio
async def test_a_malformed_event_is_dead_lettered_at_once_and_the_rest_delivered() -> None:
    handler, sink = MalformedHandler(), Sink()
    progress = PollProgress(records(8))
    await processor(handler, sink, attempts=5).process(progress)
    assert handler.calls.count([4]) == 1  # alone once: retrying cannot help
    assert sorted(handler.accepted) == [0, 1, 2, 3, 5, 6, 7]
    ((_, offset, dead),) = sink.dead
    assert offset == 2 and dead.reason.startswith("malformed: MalformedEventError")
    assert progress.commit_offsets() == {TopicPartition("events", 0): 4, TopicPartition("events", 1): 4}
