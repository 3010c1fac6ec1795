"""How an ``EventEnvelope`` looks on a Kafka topic, and how a record that cannot be read is dead-lettered.

A record is the envelope as msgspec JSON (event id, type, aggregate id, occurred at, schema version,
payload), keyed by the aggregate id (the conversation id: every event of a conversation lands on one
partition, in order) with headers ``traceparent`` (W3C trace context), ``event_type`` and
``schema_version``. Pure functions: no broker needed to test them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import msgspec

from app.domain.events import SCHEMA_VERSION, EventEnvelope, decode_payload

try:  # OpenTelemetry is optional: when present, the current span's context travels with the event.
    from opentelemetry import propagate as _otel_propagate
except ImportError:  # pragma: no cover - depends on the environment
    _otel_propagate = None

__all__ = [
    "DeadLetter",
    "Headers",
    "dead_letter_headers",
    "decode_record",
    "encode_envelope",
    "envelope_headers",
    "record_key",
    "traceparent_for",
]

Headers = list[tuple[str, bytes]]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EventEnvelope)
# Headers the dead-letter topic adds; dropped from the original headers so a record dead-lettered twice
# (replayed, failed again) carries one reason, the latest.
_DEAD_LETTER_HEADERS = frozenset(
    {"reason", "source_topic", "source_partition", "source_offset", "consumer_group", "attempts", "failed_at"}
)


class DeadLetter(msgspec.Struct, frozen=True):
    """Why one record left the stream: the reason and how many handler attempts it had (0: unreadable)."""

    reason: str
    attempts: int = 0


def encode_envelope(envelope: EventEnvelope) -> bytes:
    return _encoder.encode(envelope)


def record_key(envelope: EventEnvelope) -> bytes:
    """The partition key: the aggregate (conversation) id, as text."""
    return str(envelope.aggregate_id).encode()


def traceparent_for(envelope: EventEnvelope, context: Mapping[str, str] | None = None) -> str:
    """The W3C ``traceparent`` for ``envelope``: the current OpenTelemetry span's when one is active,
    otherwise a fresh one whose trace id is the event id (so a republished event keeps its trace)."""
    carrier = _current_trace_context() if context is None else context
    if "traceparent" in carrier:
        return carrier["traceparent"]
    trace_id = envelope.event_id.hex if envelope.event_id.int else secrets.token_hex(16)
    span_id = secrets.token_hex(8)
    while span_id == "0" * 16:  # all-zero ids are invalid in W3C trace context
        span_id = secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01"


def envelope_headers(envelope: EventEnvelope) -> Headers:
    carrier = _current_trace_context()
    headers = [(name, value.encode()) for name, value in carrier.items() if name != "traceparent"]
    headers += [
        ("traceparent", traceparent_for(envelope, carrier).encode()),
        ("event_type", envelope.event_type.value.encode()),
        ("schema_version", str(envelope.schema_version).encode()),
    ]
    return headers


def decode_record(value: bytes | None) -> EventEnvelope | DeadLetter:
    """The envelope in a record's value, or why it cannot be processed (malformed JSON, a missing or
    mistyped field, an unknown event type, an unsupported schema version, a payload of the wrong shape)."""
    if value is None:
        return DeadLetter("malformed: empty record value")
    try:
        envelope = _decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return DeadLetter(f"malformed: {exc}")
    if envelope.schema_version != SCHEMA_VERSION:
        return DeadLetter(
            f"unsupported schema version {envelope.schema_version} (this consumer reads {SCHEMA_VERSION})"
        )
    try:
        decode_payload(envelope)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return DeadLetter(f"malformed payload for {envelope.event_type.value}: {exc}")
    return envelope


def dead_letter_headers(
    original: Iterable[tuple[str, bytes]],
    dead: DeadLetter,
    *,
    topic: str,
    partition: int,
    offset: int,
    group: str,
    now: datetime | None = None,
) -> Headers:
    """The original headers plus where the record came from and why it was set aside."""
    headers = [(name, value) for name, value in original if name not in _DEAD_LETTER_HEADERS]
    headers += [
        ("reason", dead.reason[:2000].encode()),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
        ("consumer_group", group.encode()),
        ("attempts", str(dead.attempts).encode()),
        ("failed_at", (now or datetime.now(UTC)).isoformat().encode()),
    ]
    return headers


def _current_trace_context() -> dict[str, str]:
    carrier: dict[str, str] = {}
    if _otel_propagate is not None:
        _otel_propagate.inject(carrier)
    return carrier
