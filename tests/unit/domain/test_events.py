"""Event envelopes: payloads decode to their typed Structs; unknown versions are refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from app.domain.events import (
    SCHEMA_VERSION,
    ConversationStatusChanged,
    EventEnvelope,
    EventType,
    KeyCreated,
    QuizCompleted,
    decode_payload,
)
from app.domain.quiz import UnlockState

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
U = uuid.UUID(int=5)


def wrap(event_type: EventType, payload: msgspec.Struct, version: int = SCHEMA_VERSION) -> EventEnvelope:
    envelope = EventEnvelope(
        event_id=uuid.uuid4(),
        event_type=event_type,
        aggregate_id=U,
        occurred_at=NOW,
        schema_version=version,
        payload=msgspec.Raw(msgspec.json.encode(payload)),
    )
    # through the wire and back, as a Kafka consumer would see it
    return msgspec.json.decode(msgspec.json.encode(envelope), type=EventEnvelope)


STATUS = ConversationStatusChanged(
    conversation_id=U,
    participant_ids=[U, uuid.UUID(int=6)],
    unlock_state=UnlockState.UNLOCKED,
    attempt_id=None,
    score=0.9,
    retry_available_at=None,
    updated_at=NOW,
)
CASES = [
    (EventType.KEY_CREATED, KeyCreated(key_id=U, conversation_id=U, requester_id=U, target_id=U, expires_at=NOW)),
    (
        EventType.QUIZ_COMPLETED,
        QuizCompleted(
            attempt_id=U,
            key_id=U,
            conversation_id=U,
            requester_id=U,
            target_id=U,
            score=0.5,
            passed=False,
            unlock_state=UnlockState.RETRY_AVAILABLE,
            retry_available_at=NOW,
            completed_at=NOW,
        ),
    ),
    (EventType.CONVERSATION_UNLOCKED, STATUS),
    (EventType.RETRY_AVAILABLE, STATUS),
    (EventType.COOLDOWN_STARTED, STATUS),
]


@pytest.mark.parametrize(("event_type", "payload"), CASES)
def test_payloads_round_trip(event_type: EventType, payload: msgspec.Struct) -> None:
    assert decode_payload(wrap(event_type, payload)) == payload


def test_wire_format_is_camel_case() -> None:
    raw = msgspec.json.encode(wrap(*CASES[0]))
    assert b'"eventType":"KEY_CREATED"' in raw and b'"schemaVersion":1' in raw and b'"conversationId"' in raw


def test_unknown_schema_version_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="schema version"):
        decode_payload(wrap(*CASES[0], version=SCHEMA_VERSION + 1))


def test_payload_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_payload(wrap(EventType.QUIZ_COMPLETED, CASES[0][1]))
