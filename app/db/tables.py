"""Piccolo tables. JSON columns hold msgspec-encoded text so SQLite and PostgreSQL behave the same."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from piccolo.columns import (
    JSON,
    UUID,
    BigInt,
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
    "AuditLogEntry",
    "AuditSegment",
    "ConnectionKey",
    "ConnectionKeyAttempt",
    "ConnectionKeyEvent",
    "ConnectionKeyQuestion",
    "Conversation",
    "ConversationRequesterState",
    "DeviceToken",
    "ModerationDecision",
    "ProcessedEvent",
    "Profile",
    "PromptTemplate",
    "UserDataKey",
    "requester_state_id",
    "utcnow",
]


def utcnow() -> datetime:
    """The one clock the adapters use: aware UTC."""
    return datetime.now(UTC)


class Profile(Table, tablename="profiles"):
    """A person's quiz material, synced from the main app or written by its owner."""

    # display_name, bio, prompts, consent_preferences and demographic_segments hold ciphertext sealed
    # with the owner's data key (app.domain.field_crypto), hence Text: JSON fields are encoded first.
    user_id = UUID(primary_key=True)
    display_name = Text()
    bio = Text(null=True, default=None)
    prompts = Text(default="[]")
    consent_preferences = Text(default="[]")
    locale = Varchar(length=35, null=True, default=None)
    demographic_segments = Text(default="{}")
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class Conversation(Table, tablename="conversations"):
    """A pair of people; ``participant_low`` < ``participant_high`` so a pair has one row."""

    id = UUID(primary_key=True)
    pair_key = Varchar(length=73, unique=True)
    participant_low = UUID(index=True)
    participant_high = UUID(index=True)
    unlock_state = Varchar(length=20, default="LOCKED")
    """LOCKED or UNLOCKED: the pair's state. Each requester's retry state is their own
    (:class:`ConversationRequesterState`)."""
    unlocked_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())
    moderation_locked_at = Timestamptz(null=True, default=None)
    """Set by a moderator's LOCK: no new quiz and no pass unlocks until a moderator lifts it
    (``app.domain.moderation_rules``)."""
    moderation_decision_id = UUID(null=True, default=None)
    """The LOCK decision holding the lock."""


class ConversationRequesterState(Table, tablename="conversation_requester_states"):
    """One requester's side of a conversation: the outcome of their latest attempt (RETRY_AVAILABLE or
    COOLDOWN, with when they may try again), so the other participant's attempts never replace it.
    ``id`` is :func:`requester_state_id`; (conversation_id, requester_id) is unique."""

    id = UUID(primary_key=True)
    conversation_id = UUID()
    requester_id = UUID()
    unlock_state = Varchar(length=20, default="LOCKED")
    retry_available_at = Timestamptz(null=True, default=None)
    attempt_id = UUID(null=True, default=None)
    updated_at = Timestamptz(default=TimestamptzNow())


def requester_state_id(conversation_id: uuid.UUID, requester_id: uuid.UUID) -> uuid.UUID:
    """Deterministic row id for (conversation, requester)."""
    return uuid.uuid5(conversation_id, f"requester:{requester_id}")


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
    """One issued quiz: its signed payload, expiry and single-use status. At most one ISSUED key per
    (requester, conversation): a partial unique index (``connection_keys_one_open_per_pair``, migration
    2026-12-03T17:00:01) enforces it."""

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
    """A question of a key. ``answer_key`` is server-side only. prompt, choices, answer_key, topic and
    reference_texts are ciphertext sealed with the target's data key (they quote the target's profile)."""

    id = UUID(primary_key=True)
    connection_key_id = UUID(index=True)
    position = Integer()
    kind = Varchar(length=20)
    prompt = Text()
    choices = Text(null=True, default=None)
    answer_key = Text(null=True, default=None)
    topic = Text(null=True, default=None)
    reference_texts = Text(null=True, default=None)
    template_key = Varchar(length=120)
    variant = Integer(default=0)
    difficulty = Integer(default=2)


class ConnectionKeyAttempt(Table, tablename="connection_key_attempts"):
    """A submitted quiz: responses, timings, the score breakdown and what it meant for the unlock.

    ``responses`` is ciphertext under the requester's data key, ``feedback`` (it names the target and
    their topics) under the target's; in ``breakdown``/``shadow_breakdown`` only each line's free-text
    ``feedback`` is sealed (requester's key), so scores stay queryable."""

    id = UUID(primary_key=True)
    connection_key_id = UUID(unique=True)
    conversation_id = UUID(index=True)
    requester_id = UUID(index=True)
    target_id = UUID()
    responses = Text()
    total_elapsed_ms = Integer(null=True, default=None)
    score = Float()
    passed = Boolean()
    breakdown = JSON()
    shadow_breakdown = JSON(default="[]")
    experiments = JSON(default="{}")
    feedback = Text(default="[]")
    unlock_state = Varchar(length=20)
    retry_available_at = Timestamptz(null=True, default=None)
    started_at = Timestamptz()
    submitted_at = Timestamptz(default=TimestamptzNow(), index=True)
    submitted_by = UUID(null=True, default=None)
    """The moderator who submitted for the requester (``POST /connection-keys/{id}/responses``); else null."""
    request_digest = Varchar(length=64, null=True, default=None)
    """HMAC-SHA256 (hex, keyed by the payload's signing key) of the submitter, the signed payload and the
    canonical answers: an identical resubmission gets this attempt back; the answers are never in clear."""


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
    """Failed publishes that were the event's fault (never infrastructure outages)."""
    last_error = Text(null=True, default=None)
    lease_owner = Varchar(length=64, null=True, default=None)
    """The relay instance publishing this row now; others skip it until ``lease_until``."""
    lease_until = Timestamptz(null=True, default=None)
    dead_lettered_at = Timestamptz(null=True, default=None)
    """Set (with ``published_at`` and ``last_error``) when the event was malformed or unknown and set aside."""


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


class AuditLogEntry(Table, tablename="audit_log"):
    """One link of the tamper-evident audit chain (``app.domain.audit_chain``). Append-only: database
    triggers refuse UPDATE, DELETE and TRUNCATE. ``sequence`` is assigned under a lock, gapless."""

    id = UUID(primary_key=True)
    sequence = BigInt(unique=True)
    occurred_at = Timestamptz(default=TimestamptzNow())
    actor_kind = Varchar(length=16)
    actor_id = UUID(null=True, default=None)
    action = Varchar(length=80)
    subject_type = Varchar(length=60)
    subject_id = UUID(null=True, default=None, index=True)
    request_id = Varchar(length=64, null=True, default=None)
    trace_id = Varchar(length=64, null=True, default=None)
    change_digest = Varchar(length=64, null=True, default=None)
    previous_hash = Varchar(length=64)
    entry_hash = Varchar(length=64)


class AuditSegment(Table, tablename="audit_segments"):
    """A sealed range of audit entries uploaded to Object Lock storage. Append-only like the log, so a
    range is sealed once and the next segment chains to ``last_entry_hash``."""

    id = UUID(primary_key=True)
    first_sequence = BigInt(unique=True)
    last_sequence = BigInt(unique=True)
    entry_count = Integer()
    first_previous_hash = Varchar(length=64)
    last_entry_hash = Varchar(length=64)
    body_sha256 = Varchar(length=64)
    bucket = Varchar(length=255)
    object_key = Text()
    manifest_key = Text()
    version_id = Text(null=True, default=None)
    retain_until = Timestamptz()
    sealed_at = Timestamptz(default=TimestamptzNow())


class UserDataKey(Table, tablename="user_data_keys"):
    """Each user's data key (DEK), wrapped by a key-encryption key (KEK): envelope encryption.

    ``key_id`` is the id every value sealed with the key carries; ``previous_*`` keep the key one data
    rotation back, so a value a concurrent request sealed just before the rotation still opens (the next
    ``ck keys rotate-data`` re-seals it). Erasure nulls every wrapped key and sets ``destroyed_at``: the
    row stays as a tombstone, so no new key is ever made for an erased user."""

    user_id = UUID(primary_key=True)
    key_id = Varchar(length=64, null=True, default=None)
    kek_id = Varchar(length=64, null=True, default=None, index=True)
    wrapped_key = Text(null=True, default=None)
    previous_key_id = Varchar(length=64, null=True, default=None)
    previous_kek_id = Varchar(length=64, null=True, default=None)
    previous_wrapped_key = Text(null=True, default=None)
    version = Integer(default=1)
    created_at = Timestamptz(default=TimestamptzNow(), index=True)
    rotated_at = Timestamptz(null=True, default=None)
    destroyed_at = Timestamptz(null=True, default=None)


class ModerationDecision(Table, tablename="moderation_decisions"):
    """A moderator's override of an attempt's outcome (``app.domain.moderation_rules``). ``reason`` is
    free text from the moderator: stored here and nowhere else (never logged, only digested in the audit
    log). ``idempotency_id`` is uuid5 of the moderator and the request's ``Idempotency-Key``."""

    id = UUID(primary_key=True)
    attempt_id = UUID(index=True)
    conversation_id = UUID(index=True)
    moderator_id = UUID(index=True)
    decision = Varchar(length=20)
    reason = Text()
    previous_state = Varchar(length=20)
    new_state = Varchar(length=20)
    retry_available_at = Timestamptz(null=True, default=None)
    idempotency_id = UUID(null=True, default=None, unique=True)
    decided_at = Timestamptz(default=TimestamptzNow())


ALL_TABLES: tuple[type[Table], ...] = (
    Profile,
    Conversation,
    ConversationRequesterState,
    PromptTemplate,
    ConnectionKey,
    ConnectionKeyQuestion,
    ConnectionKeyAttempt,
    ConnectionKeyEvent,
    ProcessedEvent,
    DeviceToken,
    ModerationDecision,
    AuditLogEntry,
    AuditSegment,
    UserDataKey,
)
