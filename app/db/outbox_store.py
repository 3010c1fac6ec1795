"""The outbox (``connection_key_events``) and consumers' processed-event records."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import msgspec

from app.db.tables import ConnectionKeyEvent, ProcessedEvent, processed_event_id
from app.domain.events import SCHEMA_VERSION, EventEnvelope, EventType

__all__ = ["OutboxRow", "OutboxStore", "new_envelope"]


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


class OutboxRow(msgspec.Struct, frozen=True):
    """An unpublished event with its relay bookkeeping."""

    sequence: int
    envelope: EventEnvelope
    publish_attempts: int


class OutboxStore:
    """Appends events inside the caller's transaction; the relay reads and marks them."""

    async def append(self, envelopes: Sequence[EventEnvelope]) -> None:
        if not envelopes:
            return
        await ConnectionKeyEvent.insert(
            *(
                ConnectionKeyEvent(
                    event_id=e.event_id,
                    event_type=e.event_type.value,
                    aggregate_id=e.aggregate_id,
                    schema_version=e.schema_version,
                    payload=bytes(e.payload).decode(),
                    occurred_at=e.occurred_at,
                )
                for e in envelopes
            )
        ).run()

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
            OutboxRow(
                sequence=row["sequence"],
                envelope=EventEnvelope(
                    event_id=row["event_id"],
                    event_type=EventType(row["event_type"]),
                    aggregate_id=row["aggregate_id"],
                    occurred_at=row["occurred_at"],
                    schema_version=row["schema_version"],
                    payload=msgspec.Raw(row["payload"].encode()),
                ),
                publish_attempts=row["publish_attempts"],
            )
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
        if not event_ids:
            return set()
        rows = (
            await ProcessedEvent.insert(
                *(
                    ProcessedEvent(id=processed_event_id(consumer, e), consumer=consumer, event_id=e, processed_at=now)
                    for e in dict.fromkeys(event_ids)
                )
            )
            .on_conflict(action="DO NOTHING")
            .returning(ProcessedEvent.event_id)
            .run()
        )
        return {row["event_id"] for row in rows}
