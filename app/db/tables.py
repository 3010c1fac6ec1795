"""Piccolo tables. JSON columns hold msgspec-encoded text so SQLite and PostgreSQL behave the same."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from piccolo.columns import (
    JSON,
    UUID,
    BigSerial,
    Boolean,
    Float,
    Integer,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table

__all__ = [
    "ALL_TABLES",
    "ConnectionKey",
    "ConnectionKeyAttempt",
    "ConnectionKeyEvent",
    "ConnectionKeyQuestion",
    "Conversation",
    "DeviceToken",
    "ProcessedEvent",
    "Profile",
    "PromptTemplate",
    "utcnow",
]


def utcnow() -> datetime:
    """The one clock the adapters use: aware UTC."""
    return datetime.now(UTC)


class Profile(Table, tablename="profiles"):
    """A person's quiz material, synced from the main app or written by its owner."""

    user_id = UUID(primary_key=True)
    display_name = Varchar(length=80)
    bio = Text(null=True, default=None)
    prompts = JSON(default="[]")
    consent_preferences = JSON(default="[]")
    locale = Varchar(length=35, null=True, default=None)
    demographic_segments = JSON(default="{}")
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class Conversation(Table, tablename="conversations"):
    """A pair of people; ``participant_low`` < ``participant_high`` so a pair has one row."""

    id = UUID(primary_key=True)
    pair_key = Varchar(length=73, unique=True)
    participant_low = UUID(index=True)
    participant_high = UUID(index=True)
    unlock_state = Varchar(length=20, default="LOCKED")
    unlocked_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class PromptTemplate(Table, tablename="prompt_templates"):
    """The template library: question stems and distractors, loaded from ``templates/``."""

    id = UUID(primary_key=True)
    key = Varchar(length=120, unique=True)
    kind = Varchar(length=20, index=True)
    purpose = Varchar(length=20)
    text = Text()
    variants = JSON(default="[]")
    difficulty = Integer(default=2)
    locale = Varchar(length=35, default="en", index=True)
    active = Boolean(default=True)
    updated_at = Timestamptz(default=TimestamptzNow())


class ConnectionKey(Table, tablename="connection_keys"):
    """One issued quiz: its signed payload, expiry and single-use status."""

    id = UUID(primary_key=True)
    conversation_id = UUID(index=True)
    requester_id = UUID(index=True)
    target_id = UUID(index=True)
    status = Varchar(length=20, default="ISSUED")
    signing_key_id = Varchar(length=64)
    signed_payload = Text()
    difficulty = Integer(default=2)
    issued_at = Timestamptz(default=TimestamptzNow())
    expires_at = Timestamptz(index=True)
    submitted_at = Timestamptz(null=True, default=None)


class ConnectionKeyQuestion(Table, tablename="connection_key_questions"):
    """A question of a key. ``answer_key`` is server-side only."""

    id = UUID(primary_key=True)
    connection_key_id = UUID(index=True)
    position = Integer()
    kind = Varchar(length=20)
    prompt = Text()
    choices = JSON(null=True, default=None)
    answer_key = Text(null=True, default=None)
    topic = Text(null=True, default=None)
    reference_texts = JSON(null=True, default=None)
    template_key = Varchar(length=120)
    variant = Integer(default=0)
    difficulty = Integer(default=2)


class ConnectionKeyAttempt(Table, tablename="connection_key_attempts"):
    """A submitted quiz: responses, timings, the score breakdown and what it meant for the unlock."""

    id = UUID(primary_key=True)
    connection_key_id = UUID(unique=True)
    conversation_id = UUID(index=True)
    requester_id = UUID(index=True)
    target_id = UUID()
    responses = JSON()
    total_elapsed_ms = Integer(null=True, default=None)
    score = Float()
    passed = Boolean()
    breakdown = JSON()
    shadow_breakdown = JSON(default="[]")
    experiments = JSON(default="{}")
    feedback = JSON(default="[]")
    unlock_state = Varchar(length=20)
    retry_available_at = Timestamptz(null=True, default=None)
    started_at = Timestamptz()
    submitted_at = Timestamptz(default=TimestamptzNow(), index=True)


class ConnectionKeyEvent(Table, tablename="connection_key_events"):
    """The outbox: every domain event, written in the transaction of the change that caused it.

    ``sequence`` orders events for the relay (per conversation order is what consumers rely on);
    ``event_id`` is the event's identity everywhere else.
    """

    sequence = BigSerial(primary_key=True)
    event_id = UUID(unique=True)
    event_type = Varchar(length=40)
    aggregate_id = UUID(index=True)
    schema_version = Integer(default=1)
    payload = JSON()
    occurred_at = Timestamptz(default=TimestamptzNow())
    published_at = Timestamptz(null=True, default=None, index=True)
    publish_attempts = Integer(default=0)
    last_error = Text(null=True, default=None)


class ProcessedEvent(Table, tablename="processed_events"):
    """Event ids a consumer has applied, written in the same transaction as the consumer's change.

    ``id`` is uuid5(consumer, event id), so the primary key itself rejects a second application.
    """

    id = UUID(primary_key=True)
    consumer = Varchar(length=60)
    event_id = UUID()
    processed_at = Timestamptz(default=TimestamptzNow())


class DeviceToken(Table, tablename="device_tokens"):
    """A device registered for push notifications. A token belongs to one user at a time: registering it
    again (another account signed in on the device) moves it. ``last_error`` is the last failed send."""

    id = UUID(primary_key=True)
    user_id = UUID(index=True)
    platform = Varchar(length=16)
    token = Text(unique=True)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())
    last_error = Text(null=True, default=None)


def processed_event_id(consumer: str, event_id: uuid.UUID) -> uuid.UUID:
    """Deterministic row id for (consumer, event id)."""
    return uuid.uuid5(event_id, consumer)


ALL_TABLES: tuple[type[Table], ...] = (
    Profile,
    Conversation,
    PromptTemplate,
    ConnectionKey,
    ConnectionKeyQuestion,
    ConnectionKeyAttempt,
    ConnectionKeyEvent,
    ProcessedEvent,
    DeviceToken,
)
