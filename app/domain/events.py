"""Domain events and their versioned envelope: the one shape that crosses the event bus."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import msgspec
from msgspec import Struct

from app.domain.quiz import UnlockState

__all__ = [
    "SCHEMA_VERSION",
    "ConversationStatusChanged",
    "EventEnvelope",
    "EventType",
    "KeyCreated",
    "QuizCompleted",
    "decode_payload",
]

SCHEMA_VERSION = 1


class EventType(str, enum.Enum):
    KEY_CREATED = "KEY_CREATED"
    QUIZ_COMPLETED = "QUIZ_COMPLETED"
    CONVERSATION_UNLOCKED = "CONVERSATION_UNLOCKED"
    RETRY_AVAILABLE = "RETRY_AVAILABLE"
    COOLDOWN_STARTED = "COOLDOWN_STARTED"
    CONVERSATION_LOCKED = "CONVERSATION_LOCKED"
    """A moderator revoked an unlock (``POST /moderation/attempts/{id}/override`` with ``LOCK``)."""


class KeyCreated(Struct, frozen=True, rename="camel"):
    key_id: uuid.UUID
    conversation_id: uuid.UUID
    requester_id: uuid.UUID
    target_id: uuid.UUID
    expires_at: datetime


class QuizCompleted(Struct, frozen=True, rename="camel"):
    attempt_id: uuid.UUID
    key_id: uuid.UUID
    conversation_id: uuid.UUID
    requester_id: uuid.UUID
    target_id: uuid.UUID
    score: float
    passed: bool
    unlock_state: UnlockState
    retry_available_at: datetime | None
    completed_at: datetime


class ConversationStatusChanged(Struct, frozen=True, rename="camel"):
    """Payload of CONVERSATION_UNLOCKED, RETRY_AVAILABLE, COOLDOWN_STARTED and CONVERSATION_LOCKED."""

    conversation_id: uuid.UUID
    participant_ids: list[uuid.UUID]
    unlock_state: UnlockState
    attempt_id: uuid.UUID | None
    score: float | None
    retry_available_at: datetime | None
    updated_at: datetime
    requester_id: uuid.UUID | None = None
    """Who took the quiz (retry notices go to them only); absent in events written before it existed."""


_PAYLOADS: dict[EventType, type[Struct]] = {
    EventType.KEY_CREATED: KeyCreated,
    EventType.QUIZ_COMPLETED: QuizCompleted,
    EventType.CONVERSATION_UNLOCKED: ConversationStatusChanged,
    EventType.RETRY_AVAILABLE: ConversationStatusChanged,
    EventType.COOLDOWN_STARTED: ConversationStatusChanged,
    EventType.CONVERSATION_LOCKED: ConversationStatusChanged,
}


class EventEnvelope(Struct, frozen=True, rename="camel"):
    """What the outbox relay publishes; ``payload`` is the JSON-ready event body."""

    event_id: uuid.UUID
    event_type: EventType
    aggregate_id: uuid.UUID
    occurred_at: datetime
    schema_version: int
    payload: msgspec.Raw


def decode_payload(envelope: EventEnvelope) -> Struct:
    """The typed payload of ``envelope``; raises ``msgspec.ValidationError`` on an unknown version or shape."""
    if envelope.schema_version != SCHEMA_VERSION:
        raise msgspec.ValidationError(f"unsupported schema version {envelope.schema_version}")
    return msgspec.json.decode(envelope.payload, type=_PAYLOADS[envelope.event_type])
