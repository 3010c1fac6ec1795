"""The Kafka record format: envelope JSON, key, headers, and what makes a record unreadable."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from app.adapters import kafka_records
from app.adapters.kafka_bus import KafkaEventBus
from app.adapters.kafka_records import (
    DeadLetter,
    dead_letter_headers,
    decode_record,
    encode_envelope,
    envelope_headers,
    record_key,
    traceparent_for,
)
from app.domain.events import SCHEMA_VERSION, EventEnvelope, EventType, KeyCreated

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def envelope(event_id: uuid.UUID | None = None, **changes: object) -> EventEnvelope:
    conversation = uuid.UUID(int=7)
    payload = KeyCreated(
        key_id=uuid.UUID(int=1),
        conversation_id=conversation,
        requester_id=uuid.UUID(int=2),
        target_id=uuid.UUID(int=3),
        expires_at=NOW,
    )
    event = EventEnvelope(
        event_id=event_id or uuid.uuid4(),
        event_type=EventType.KEY_CREATED,
        aggregate_id=conversation,
        occurred_at=NOW,
        schema_version=SCHEMA_VERSION,
        payload=msgspec.Raw(msgspec.json.encode(payload)),
    )
    return msgspec.structs.replace(event, **changes)


def test_an_envelope_round_trips_through_its_record() -> None:
    event = envelope()
    assert decode_record(encode_envelope(event)) == event
    assert record_key(event) == b"00000000-0000-0000-0000-000000000007"


def test_headers_carry_type_version_and_a_trace_derived_from_the_event() -> None:
    event = envelope()
    headers = dict(envelope_headers(event))
    assert headers["event_type"] == b"KEY_CREATED" and headers["schema_version"] == str(SCHEMA_VERSION).encode()
    traceparent = headers["traceparent"].decode()
    assert TRACEPARENT.match(traceparent) and traceparent.split("-")[1] == event.event_id.hex
    assert traceparent_for(event) != traceparent  # a new span id each time, the same trace id
    assert traceparent_for(event).split("-")[1] == event.event_id.hex


def test_an_all_zero_event_id_still_gives_a_valid_trace_id() -> None:
    traceparent = traceparent_for(envelope(uuid.UUID(int=0)))
    assert TRACEPARENT.match(traceparent) and traceparent.split("-")[1] != "0" * 32


def test_a_current_trace_context_wins_over_a_generated_one() -> None:
    context = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    assert traceparent_for(envelope(), context) == context["traceparent"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "malformed: empty record value"),
        (b"{not json", "malformed: "),
        (b'{"eventId": "x"}', "malformed: "),
        (encode_envelope(envelope()).replace(b'"KEY_CREATED"', b'"KEY_EATEN"'), "malformed: "),
        (encode_envelope(envelope(schema_version=SCHEMA_VERSION + 1)), "unsupported schema version 2"),
        (encode_envelope(envelope(payload=msgspec.Raw(b'{"keyId": 1}'))), "malformed payload for KEY_CREATED"),
    ],
)
def test_unreadable_records_say_why(value: bytes | None, reason: str) -> None:
    decoded = decode_record(value)
    assert isinstance(decoded, DeadLetter) and decoded.reason.startswith(reason) and decoded.attempts == 0


def test_dead_letter_headers_keep_the_original_ones_and_replace_an_older_reason() -> None:
    original = [("traceparent", b"tp"), ("reason", b"old"), ("attempts", b"9")]
    headers = dead_letter_headers(
        original, DeadLetter("handler failed", 3), topic="events", partition=2, offset=41, group="unlock", now=NOW
    )
    assert headers[0] == ("traceparent", b"tp")
    as_dict = dict(headers)
    assert [name for name, _ in headers].count("reason") == 1 and as_dict["reason"] == b"handler failed"
    assert as_dict["attempts"] == b"3" and as_dict["source_topic"] == b"events"
    assert as_dict["source_partition"] == b"2" and as_dict["source_offset"] == b"41"
    assert as_dict["consumer_group"] == b"unlock" and as_dict["failed_at"] == NOW.isoformat().encode()


def test_bus_options_are_checked_and_nothing_connects_before_start() -> None:
    bus = KafkaEventBus(" a:9092, b:9092 ", topic="events")
    health = bus.health()
    assert health["bootstrapServers"] == "a:9092,b:9092" and health["connected"] is False
    assert bus.dead_letter_topic == "events.dlq" and health["consumers"] == {}
    with pytest.raises(ValueError, match="empty"):
        KafkaEventBus(" , ")
    with pytest.raises(ValueError, match="at least 1"):
        KafkaEventBus("a:9092", max_attempts=0)
    bus.subscribe("unlock", _noop)
    with pytest.raises(ValueError, match="already subscribed"):
        bus.subscribe("unlock", _noop)
    assert bus.health()["consumers"]["unlock"]["running"] is False


async def _noop(envelopes: object) -> None:
    return None


def test_an_opentelemetry_context_is_propagated_when_the_package_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    class Propagator:
        @staticmethod
        def inject(carrier: dict[str, str]) -> None:
            carrier["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            carrier["tracestate"] = "ck=1"

    monkeypatch.setattr(kafka_records, "_otel_propagate", Propagator)
    headers = dict(envelope_headers(envelope()))
    assert headers["traceparent"] == b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert headers["tracestate"] == b"ck=1"
