"""KafkaEventBus against a real Kafka-protocol broker (Tansu, or ``CK_TEST_KAFKA_BOOTSTRAP``).

Each test publishes to its own topic; consumer groups are fresh unless the test is about rejoining one.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import MessageSizeTooLargeError

from app.adapters.event_bus import BusUnavailableError, TransientHandlerError
from app.adapters.kafka_bus import KafkaEventBus
from app.domain.events import SCHEMA_VERSION, EventEnvelope, EventType, KeyCreated
from tests import kafka_server as kafka_fixtures
from tests.kafka_server import KafkaTestServer, TansuBroker, free_port

# The broker fixtures (assigned, not imported, so the test parameters of the same names read plainly).
kafka_server = kafka_fixtures.kafka_server
kafka_topic = kafka_fixtures.kafka_topic
tansu_broker = kafka_fixtures.tansu_broker

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def envelope(conversation: uuid.UUID, n: int = 0) -> EventEnvelope:
    payload = KeyCreated(
        key_id=uuid.uuid4(),
        conversation_id=conversation,
        requester_id=uuid.uuid4(),
        target_id=uuid.uuid4(),
        expires_at=NOW,
    )
    return EventEnvelope(
        event_id=uuid.uuid4(),
        event_type=EventType.KEY_CREATED,
        aggregate_id=conversation,
        occurred_at=NOW.replace(microsecond=n),
        schema_version=SCHEMA_VERSION,
        payload=msgspec.Raw(msgspec.json.encode(payload)),
    )


class Collector:
    """A handler that records the batches it accepted; ``fail`` decides per call whether to raise."""

    def __init__(self, fail: Callable[[Sequence[EventEnvelope]], BaseException | None] | None = None) -> None:
        self.accepted: list[EventEnvelope] = []
        self.calls: list[list[uuid.UUID]] = []
        self.fail = fail

    async def __call__(self, envelopes: Sequence[EventEnvelope]) -> None:
        self.calls.append([e.event_id for e in envelopes])
        error = self.fail(envelopes) if self.fail else None
        if error is not None:
            raise error
        self.accepted.extend(envelopes)

    @property
    def ids(self) -> list[uuid.UUID]:
        return [e.event_id for e in self.accepted]


async def eventually(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 15.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` (all partitions, no consumer group) until ``count`` have arrived."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    assert len(records) >= count, f"{len(records)} of {count} records on {topic}"
    return records


def new_group() -> str:
    return f"group-{uuid.uuid4().hex[:8]}"


@pytest.mark.asyncio
async def test_published_events_reach_the_group_with_key_and_headers(
    kafka_server: KafkaTestServer, kafka_topic: str
) -> None:
    collector = Collector()
    conversation = uuid.uuid4()
    events = [envelope(conversation, n) for n in range(3)]
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **kafka_server.bus_options()) as bus:
        bus.subscribe(new_group(), collector)
        await bus.publish(events)
        await eventually(lambda: len(collector.accepted) == 3, what="three events")
        health = bus.health()
    assert collector.accepted == events  # decoded back to equal envelopes, in order
    assert health["connected"] is True and health["topic"] == kafka_topic
    (stats,) = health["consumers"].values()
    assert stats["processed"] == 3 and stats["deadLettered"] == 0

    records = await read_topic(kafka_server.bootstrap_servers, kafka_topic, 3)
    assert len({r.partition for r in records}) == 1  # one key, one partition
    for record, event in zip(sorted(records, key=lambda r: r.offset), events, strict=True):
        headers = dict(record.headers)
        assert record.key == str(conversation).encode()
        assert msgspec.json.decode(record.value, type=EventEnvelope) == event
        assert headers["event_type"] == b"KEY_CREATED" and headers["schema_version"] == str(SCHEMA_VERSION).encode()
        traceparent = headers["traceparent"].decode()
        assert TRACEPARENT.match(traceparent) and traceparent[3:35] == event.event_id.hex


@pytest.mark.asyncio
async def test_order_per_conversation_holds_across_partitions(kafka_server: KafkaTestServer, kafka_topic: str) -> None:
    collector = Collector()
    conversations = [uuid.uuid4() for _ in range(8)]
    events = [envelope(c, n) for n in range(25) for c in conversations]  # interleaved
    options = kafka_server.bus_options(poll_batch_size=37)  # polls cut through the conversations
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **options) as bus:
        bus.subscribe(new_group(), collector)
        for start in range(0, len(events), 50):
            await bus.publish(events[start : start + 50])
        await eventually(lambda: len(collector.accepted) == len(events), what="every event")
    for conversation in conversations:
        sent = [e.event_id for e in events if e.aggregate_id == conversation]
        assert [e.event_id for e in collector.accepted if e.aggregate_id == conversation] == sent
    records = await read_topic(kafka_server.bootstrap_servers, kafka_topic, len(events))
    assert len({r.partition for r in records}) > 1


@pytest.mark.asyncio
async def test_committed_events_are_not_redelivered_to_the_group(
    kafka_server: KafkaTestServer, kafka_topic: str
) -> None:
    group = new_group()
    first, second = Collector(), Collector()
    old = [envelope(uuid.uuid4()) for _ in range(4)]
    new = envelope(uuid.uuid4())
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **kafka_server.bus_options()) as bus:
        bus.subscribe(group, first)
        await bus.publish(old)
        await eventually(lambda: len(first.accepted) == 4, what="the first four")
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **kafka_server.bus_options()) as bus:
        bus.subscribe(group, second)
        await bus.publish([new])
        await eventually(lambda: len(second.accepted) >= 1, timeout=30, what="the new event")
        await asyncio.sleep(0.3)
    assert second.ids == [new.event_id]


@pytest.mark.asyncio
async def test_a_batch_in_hand_when_the_process_dies_is_redelivered(
    kafka_server: KafkaTestServer, kafka_topic: str
) -> None:
    """The first consumer never finishes its handler (a crash, as far as Kafka can tell): nothing was
    committed, so the same group gets every event again; duplicates are the handler's to ignore."""
    group = new_group()
    events = [envelope(uuid.uuid4()) for _ in range(5)]
    stuck = asyncio.Event()

    async def hangs(envelopes: Sequence[EventEnvelope]) -> None:
        stuck.set()
        await asyncio.Event().wait()

    options = kafka_server.bus_options(shutdown_grace_seconds=0.2)
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **options) as bus:
        bus.subscribe(group, hangs)
        await bus.publish(events)
        await asyncio.wait_for(stuck.wait(), 20)
    collector = Collector()
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **kafka_server.bus_options()) as bus:
        bus.subscribe(group, collector)
        await eventually(lambda: len(collector.accepted) == 5, timeout=30, what="the redelivered batch")
    assert sorted(collector.ids) == sorted(e.event_id for e in events)


@pytest.mark.asyncio
async def test_failed_attempts_redeliver_rather_than_lose(kafka_server: KafkaTestServer, kafka_topic: str) -> None:
    """A plain failure is retried in place; a transient one rewinds the consumer and polls again; a
    duplicate publish is delivered twice (the bus never drops, the orchestrator dedupes by event id)."""
    conversation = uuid.uuid4()
    first, second = envelope(conversation, 1), envelope(conversation, 2)
    failures: list[BaseException] = [RuntimeError("flaky"), TransientHandlerError("database down")]
    collector = Collector(lambda _: failures.pop(0) if failures else None)
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **kafka_server.bus_options()) as bus:
        bus.subscribe(new_group(), collector)
        await bus.publish([first, second, first])
        await eventually(lambda: len(collector.accepted) == 3, what="all three deliveries")
        stats = next(iter(bus.health()["consumers"].values()))
    assert collector.ids == [first.event_id, second.event_id, first.event_id]
    assert len(collector.calls) >= 3 and stats["deadLettered"] == 0 and "database down" in stats["lastError"]


@pytest.mark.asyncio
async def test_unreadable_records_go_to_the_dead_letter_topic_and_the_stream_goes_on(
    kafka_server: KafkaTestServer, kafka_topic: str
) -> None:
    conversation = uuid.uuid4()
    key = str(conversation).encode()
    future = msgspec.json.encode(msgspec.structs.replace(envelope(conversation), schema_version=SCHEMA_VERSION + 1))
    good = envelope(conversation, 3)
    collector = Collector()
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **kafka_server.bus_options()) as bus:
        bus.subscribe(new_group(), collector)
        await bus.ensure_topics()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(kafka_topic, b"{not json", key=key, headers=[("event_type", b"?")])
            await producer.send_and_wait(kafka_topic, future, key=key)
        finally:
            await producer.stop()
        await bus.publish([good])
        await eventually(lambda: len(collector.accepted) == 1, what="the good event")
        stats = next(iter(bus.health()["consumers"].values()))
    assert collector.ids == [good.event_id] and len(collector.calls) == 1  # the handler never saw the others
    assert stats["deadLettered"] == 2

    dead = sorted(await read_topic(kafka_server.bootstrap_servers, f"{kafka_topic}.dlq", 2), key=lambda r: r.offset)
    assert [r.value for r in dead] == [b"{not json", future] and all(r.key == key for r in dead)
    reasons = [dict(r.headers)["reason"].decode() for r in dead]
    assert reasons[0].startswith("malformed") and "unsupported schema version 2" in reasons[1]
    headers = dict(dead[0].headers)
    assert headers["source_topic"] == kafka_topic.encode() and headers["source_offset"] == b"0"
    assert headers["event_type"] == b"?"  # the original headers travel along


@pytest.mark.asyncio
async def test_an_event_that_keeps_failing_is_dead_lettered_after_n_attempts(
    kafka_server: KafkaTestServer, kafka_topic: str
) -> None:
    conversation = uuid.uuid4()
    events = [envelope(conversation, n) for n in range(6)] + [envelope(uuid.uuid4(), n) for n in range(4)]
    poison = events[2]

    def fail(envelopes: Sequence[EventEnvelope]) -> BaseException | None:
        return LookupError("conversation does not exist") if poison in envelopes else None

    collector = Collector(fail)
    options = kafka_server.bus_options(max_attempts=3, retry_backoff_seconds=0.01)
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **options) as bus:
        bus.subscribe(new_group(), collector)
        await bus.publish(events)
        await eventually(lambda: len(collector.accepted) == 9, what="the nine good events")
        stats = next(iter(bus.health()["consumers"].values()))
    assert sorted(collector.ids) == sorted(e.event_id for e in events if e is not poison)
    same_conversation = [e.event_id for e in collector.accepted if e.aggregate_id == conversation]
    assert same_conversation == [e.event_id for e in events[:6] if e is not poison]  # order kept around the hole
    assert sum(poison.event_id in call for call in collector.calls if len(call) == 1) == 3
    assert stats["deadLettered"] == 1

    (dead,) = await read_topic(kafka_server.bootstrap_servers, f"{kafka_topic}.dlq", 1)
    assert msgspec.json.decode(dead.value, type=EventEnvelope) == poison
    headers = dict(dead.headers)
    assert headers["attempts"] == b"3"
    assert headers["reason"] == b"handler failed 3 times: LookupError: conversation does not exist"
    assert headers["event_type"] == b"KEY_CREATED" and TRACEPARENT.match(headers["traceparent"].decode())


@pytest.mark.asyncio
async def test_broker_restart_mid_stream(tansu_broker: TansuBroker, kafka_topic: str) -> None:
    """Publishing fails while the broker is away (the outbox would keep the rows) and both directions
    resume when it is back. Tansu keeps data in memory only, so the new broker starts empty."""
    server = KafkaTestServer(tansu_broker.bootstrap_servers, tansu=True, idempotent=False)
    collector = Collector()
    before = [envelope(uuid.uuid4(), n) for n in range(3)]
    conversation = uuid.uuid4()
    after = [envelope(conversation, n) for n in range(5)]
    options = server.bus_options(request_timeout_ms=1_500)
    async with KafkaEventBus(server.bootstrap_servers, topic=kafka_topic, **options) as bus:
        bus.subscribe(new_group(), collector)
        await bus.publish(before)
        await eventually(lambda: len(collector.accepted) == 3, what="events before the restart")

        tansu_broker.stop()
        with pytest.raises(BusUnavailableError):
            await bus.publish(after)
        assert bus.health()["connected"] is False and bus.health()["lastError"]
        assert await bus.ping(timeout=1.0) is False

        tansu_broker.start()
        deadline = time.monotonic() + 30
        while True:  # what the relay does: keep the rows, try again later
            try:
                await bus.publish(after)
                break
            except BusUnavailableError:
                assert time.monotonic() < deadline, "publishing did not resume"
                await asyncio.sleep(0.2)
        await eventually(lambda: len(collector.accepted) >= 8, timeout=40, what="events after the restart")
        assert await bus.ping() is True and bus.health()["connected"] is True
    resumed = [e.event_id for e in collector.accepted[3:] if e.aggregate_id == conversation]
    assert resumed[-5:] == [e.event_id for e in after]


@pytest.mark.asyncio
async def test_a_refused_event_raises_the_broker_error(kafka_server: KafkaTestServer, kafka_topic: str) -> None:
    """Not an outage: the relay should count it towards setting the event aside."""
    huge = msgspec.structs.replace(envelope(uuid.uuid4()), payload=msgspec.Raw(b'"' + b"x" * 2_000_000 + b'"'))
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **kafka_server.bus_options()) as bus:
        with pytest.raises(MessageSizeTooLargeError):
            await bus.publish([huge])
        await bus.publish([envelope(uuid.uuid4())])  # and the bus carries on


@pytest.mark.asyncio
async def test_a_bus_started_without_a_broker_raises_on_publish_and_stops_cleanly(kafka_topic: str) -> None:
    bus = KafkaEventBus(f"127.0.0.1:{free_port()}", topic=kafka_topic, request_timeout_ms=1_000)
    bus.subscribe("nobody", Collector())
    async with bus:
        with pytest.raises(BusUnavailableError):
            await bus.publish([envelope(uuid.uuid4())])
        health = bus.health()
        assert health["connected"] is False and health["lastError"]
        assert health["consumers"]["nobody"]["running"] is False


@pytest.mark.asyncio
async def test_tansu_refuses_idempotent_producers(kafka_server: KafkaTestServer, kafka_topic: str) -> None:
    """Why ``bus_options`` turns idempotence off for Tansu: if this starts failing, Tansu learned
    InitProducerId v0 and the tests can use the production setting."""
    if not kafka_server.tansu:
        pytest.skip("a Tansu quirk")
    options: dict[str, Any] = kafka_server.bus_options(idempotent_producer=True)
    async with KafkaEventBus(kafka_server.bootstrap_servers, topic=kafka_topic, **options) as bus:
        with pytest.raises(BusUnavailableError, match="UnknownError"):
            await bus.publish([envelope(uuid.uuid4())])
