"""The outbox (``connection_key_events``) and consumers' processed-event records."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from app.db.bulk_insert import insert_rows
from app.db.tables import ConnectionKeyEvent, ProcessedEvent, processed_event_id
from app.domain.events import SCHEMA_VERSION, EventEnvelope, EventType

__all__ = ["OutboxRow", "OutboxStore", "envelope_of", "new_envelope"]


def new_envelope(
    event_type: EventType, aggregate_id: uuid.UUID, payload: msgspec.Struct, now: datetime
) -> EventEnvelope:
    """A fresh envelope (new event id, current schema version) around ``payload``."""
    return EventEnvelope(
        event_id=uuid.uuid4(),
        event_type=event_type,
        aggregate_id=aggregate_id,
        occurred_at=now,
        schema_version=SCHEMA_VERSION,
        payload=msgspec.Raw(msgspec.json.encode(payload)),
    )


def envelope_of(row: dict[str, Any]) -> EventEnvelope:
    """The envelope stored in a ``connection_key_events`` row."""
    return EventEnvelope(
        event_id=row["event_id"],
        event_type=EventType(row["event_type"]),
        aggregate_id=row["aggregate_id"],
        occurred_at=row["occurred_at"],
        schema_version=row["schema_version"],
        payload=msgspec.Raw(row["payload"].encode()),
    )


class OutboxRow(msgspec.Struct, frozen=True):
    """An unpublished event with its relay bookkeeping."""

    sequence: int
    envelope: EventEnvelope
    publish_attempts: int


class OutboxStore:
    """Appends events inside the caller's transaction; the relay reads and marks them."""

    async def append(self, envelopes: Sequence[EventEnvelope]) -> None:
        t = ConnectionKeyEvent
        await insert_rows(
            t,
            [t.event_id, t.event_type, t.aggregate_id, t.schema_version, t.payload, t.occurred_at, t.publish_attempts],
            [
                (
                    e.event_id,
                    e.event_type.value,
                    e.aggregate_id,
                    e.schema_version,
                    bytes(e.payload).decode(),
                    e.occurred_at,
                    0,
                )
                for e in envelopes
            ],
        )

    async def unpublished(self, limit: int) -> list[OutboxRow]:
        """The oldest unpublished events, in commit order."""
        rows = (
            await ConnectionKeyEvent.select()
            .where(ConnectionKeyEvent.published_at.is_null())
            .order_by(ConnectionKeyEvent.sequence)
            .limit(limit)
            .run()
        )
        return [
            OutboxRow(sequence=row["sequence"], envelope=envelope_of(row), publish_attempts=row["publish_attempts"])
            for row in rows
        ]

    async def mark_published(self, sequences: Sequence[int], now: datetime) -> None:
        if sequences:
            await (
                ConnectionKeyEvent.update({ConnectionKeyEvent.published_at: now})
                .where(ConnectionKeyEvent.sequence.is_in(list(sequences)))
                .run()
            )

    async def mark_failed(self, sequence: int, error: str, dead: bool, now: datetime) -> None:
        """Count a failed publish; a dead event is set aside (published_at set, error kept) so the rest flow."""
        values: dict = {
            ConnectionKeyEvent.publish_attempts: ConnectionKeyEvent.publish_attempts + 1,
            ConnectionKeyEvent.last_error: error[:500],
        }
        if dead:
            values[ConnectionKeyEvent.published_at] = now
        await ConnectionKeyEvent.update(values).where(ConnectionKeyEvent.sequence == sequence).run()

    async def record_processed_many(
        self, consumer: str, event_ids: Sequence[uuid.UUID], now: datetime
    ) -> set[uuid.UUID]:
        """Record several events at once; returns the ids that were new (not applied before)."""
        t = ProcessedEvent
        rows = await insert_rows(
            t,
            [t.id, t.consumer, t.event_id, t.processed_at],
            [(processed_event_id(consumer, e), consumer, e, now) for e in dict.fromkeys(event_ids)],
            suffix='ON CONFLICT DO NOTHING RETURNING "event_id"',
        )
        # SQLite hands back the stored text, PostgreSQL a UUID.
        return {uuid.UUID(str(row["event_id"])) for row in rows}
