"""The outbox (``connection_key_events``) and consumers' processed-event records.

Several relay instances share the outbox through leases: :meth:`OutboxStore.lease` claims, in one
statement, the oldest unpublished row of each conversation (``aggregate_id``) that nobody holds, so each
row is published by one instance at a time (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises
writers) and a conversation's events go out in commit order: a later row is claimed only once every
earlier one of its conversation is published or dead-lettered.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from piccolo.querystring import QueryString

from app.db.bulk_insert import insert_rows
from app.db.tables import ConnectionKeyEvent, ProcessedEvent, processed_event_id
from app.domain.events import SCHEMA_VERSION, EventEnvelope, EventType, decode_payload

__all__ = ["LeasedRow", "OutboxRow", "OutboxStore", "envelope_of", "new_envelope", "read_leased"]


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


class LeasedRow(msgspec.Struct, frozen=True):
    """A row this instance holds: its envelope, or (``envelope is None``) why it cannot be read."""

    sequence: int
    event_id: uuid.UUID
    aggregate_id: uuid.UUID
    publish_attempts: int
    envelope: EventEnvelope | None
    malformed: str | None = None


def read_leased(row: dict[str, Any]) -> LeasedRow:
    """A leased row, decoded as far as it can be: an unknown type, schema version or payload shape
    makes it malformed (never an exception, so one bad row cannot stop the relay)."""
    try:
        envelope = envelope_of(row)
        decode_payload(envelope)
    except (ValueError, KeyError, msgspec.DecodeError) as exc:  # ValidationError is a DecodeError
        return LeasedRow(
            row["sequence"],
            uuid.UUID(str(row["event_id"])),
            uuid.UUID(str(row["aggregate_id"])),
            row["publish_attempts"],
            None,
            f"malformed {row.get('event_type')!s:.40} event: {exc}"[:500],
        )
    return LeasedRow(row["sequence"], envelope.event_id, envelope.aggregate_id, row["publish_attempts"], envelope)


def _engine_is_sqlite() -> bool:
    return ConnectionKeyEvent._meta.db.engine_type == "sqlite"


async def _run(sql: str, *args: Any) -> list[dict[str, Any]]:
    # Identifiers are constants of this module; values are bound parameters.
    return await ConnectionKeyEvent._meta.db.run_querystring(QueryString(sql, *args))


PRUNE_BATCH = 500
"""Rows one pruning statement deletes at most (one short write each)."""


async def _delete_in_batches(table: str, key: str, condition: str, before: datetime, batch_size: int) -> int:
    """Delete the rows of ``table`` matching ``condition`` (one ``{}``: ``before``), ``batch_size`` at a
    time, each batch in a write of its own; returns how many went, counted by the database (no
    ``RETURNING`` of every row). ``table``, ``key`` and ``condition`` are this module's constants."""
    delete = (
        f'DELETE FROM "{table}" WHERE "{key}" IN '  # noqa: S608 - constants; values are bound
        f'(SELECT "{key}" FROM "{table}" WHERE {condition} LIMIT {{}})'
    )
    total = 0
    while True:
        if _engine_is_sqlite():
            db = ConnectionKeyEvent._meta.db
            outer = db.current_transaction.get()
            try:
                async with db.transaction():  # the writer's connection, so changes() counts this DELETE
                    await _run(delete, before, batch_size)
                    deleted = (await _run('SELECT changes() AS "n"'))[0]["n"]
            finally:
                if db.current_transaction.get() is not outer:
                    db.current_transaction.set(outer)
        else:
            counted = f'WITH d AS ({delete} RETURNING 1) SELECT count(*) AS "n" FROM d'  # noqa: S608 - as above
            rows = await _run(counted, before, batch_size)
            deleted = rows[0]["n"]
        total += int(deleted)
        if deleted < batch_size:
            return total
        await asyncio.sleep(0)  # let waiting writes in between batches


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

    async def lease(self, owner: str, now: datetime, until: datetime, limit: int) -> list[LeasedRow]:
        """Claim for ``owner`` until ``until`` up to ``limit`` rows: per conversation the oldest unpublished
        row, if nobody holds it (no lease, or one that ran out before ``now``). In commit order."""
        lock = "" if _engine_is_sqlite() else "FOR UPDATE SKIP LOCKED"
        claimed = await _run(  # `lock` is one of two constants; every value is a bound parameter
            f"""UPDATE "connection_key_events" SET "lease_owner" = {{}}, "lease_until" = {{}}
            WHERE "sequence" IN (
                SELECT e."sequence" FROM "connection_key_events" e
                WHERE e."published_at" IS NULL
                  AND (e."lease_until" IS NULL OR e."lease_until" <= {{}})
                  AND NOT EXISTS (
                    SELECT 1 FROM "connection_key_events" p
                    WHERE p."aggregate_id" = e."aggregate_id" AND p."published_at" IS NULL
                      AND p."sequence" < e."sequence")
                ORDER BY e."sequence" LIMIT {{}} {lock})
            RETURNING "sequence\"""",  # noqa: S608
            owner,
            until,
            now,
            limit,
        )
        if not claimed:
            return []
        rows = (
            await ConnectionKeyEvent.select()
            .where(
                ConnectionKeyEvent.sequence.is_in([row["sequence"] for row in claimed])
                & (ConnectionKeyEvent.lease_owner == owner)
            )
            .order_by(ConnectionKeyEvent.sequence)
            .run()
        )
        return [read_leased(row) for row in rows]

    async def hold(self, sequences: Sequence[int], owner: str, until: datetime) -> None:
        """Keep ``owner``'s claim on the rows until ``until`` (a backoff: nobody retries them sooner)."""
        if sequences:
            await (
                ConnectionKeyEvent.update({ConnectionKeyEvent.lease_until: until})
                .where(ConnectionKeyEvent.sequence.is_in(list(sequences)) & (ConnectionKeyEvent.lease_owner == owner))
                .run()
            )

    async def release(self, sequences: Sequence[int], owner: str) -> None:
        """Give ``owner``'s claim on the rows back, so any instance may take them at once."""
        if sequences:
            await (
                ConnectionKeyEvent.update({ConnectionKeyEvent.lease_owner: None, ConnectionKeyEvent.lease_until: None})
                .where(ConnectionKeyEvent.sequence.is_in(list(sequences)) & (ConnectionKeyEvent.lease_owner == owner))
                .run()
            )

    async def release_expired(self, sequences: Sequence[int], now: datetime) -> None:
        """Clear the leases on the rows that ran out before ``now`` (a dead instance's), whoever held them."""
        t = ConnectionKeyEvent
        if sequences:
            await (
                t.update({t.lease_owner: None, t.lease_until: None})
                .where(t.sequence.is_in(list(sequences)) & (t.lease_until.is_null() | (t.lease_until <= now)))
                .run()
            )

    async def dead_letter(self, sequence: int, error: str, now: datetime) -> None:
        """Set a malformed or unknown event aside: marked published and dead-lettered, with its error."""
        await (
            ConnectionKeyEvent.update(
                {
                    ConnectionKeyEvent.published_at: now,
                    ConnectionKeyEvent.dead_lettered_at: now,
                    ConnectionKeyEvent.last_error: error[:500],
                    ConnectionKeyEvent.lease_until: None,
                }
            )
            .where(ConnectionKeyEvent.sequence == sequence)
            .run()
        )

    async def dead_lettered_count(self) -> int:
        """Events ever set aside (and not pruned)."""
        return await ConnectionKeyEvent.count().where(ConnectionKeyEvent.dead_lettered_at.is_not_null()).run()

    async def orphans(self, older_than: datetime, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Unpublished rows that occurred before ``older_than``, that nobody holds now (never leased, or
        leased by an instance that died or stalled) and that are next in line for their conversation
        (a row behind an unpublished one waits for it, held or not): what the reconciler republishes."""
        return await _run(
            """SELECT e."sequence", e."event_id", e."event_type", e."aggregate_id", e."lease_owner"
            FROM "connection_key_events" e
            WHERE e."published_at" IS NULL AND e."occurred_at" < {}
              AND (e."lease_until" IS NULL OR e."lease_until" <= {})
              AND NOT EXISTS (
                SELECT 1 FROM "connection_key_events" p
                WHERE p."aggregate_id" = e."aggregate_id" AND p."published_at" IS NULL
                  AND p."sequence" < e."sequence")
            ORDER BY e."sequence" LIMIT {}""",
            older_than,
            now,
            limit,
        )

    async def published_among(self, sequences: Sequence[int]) -> set[int]:
        """Which of the rows are published now (dead-lettered rows are not)."""
        if not sequences:
            return set()
        t = ConnectionKeyEvent
        rows = await (
            t.select(t.sequence)
            .where(t.sequence.is_in(list(sequences)) & t.published_at.is_not_null() & t.dead_lettered_at.is_null())
            .run()
        )
        return {row["sequence"] for row in rows}

    async def prune(self, before: datetime, batch_size: int = PRUNE_BATCH) -> tuple[int, int]:
        """Delete events published (or dead-lettered) and processed-event records older than ``before``;
        returns how many of each. Unpublished events are never pruned. In batches of ``batch_size``,
        each its own short write, so a large backlog (the first run after an upgrade) never holds the
        writer (SQLite's only one) for long: request writes take turns with it."""
        events = await _delete_in_batches(
            "connection_key_events",
            "sequence",
            '"published_at" IS NOT NULL AND "published_at" < {}',
            before,
            batch_size,
        )
        processed = await _delete_in_batches("processed_events", "id", '"processed_at" < {}', before, batch_size)
        return events, processed

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
                ConnectionKeyEvent.update({ConnectionKeyEvent.published_at: now, ConnectionKeyEvent.lease_until: None})
                .where(ConnectionKeyEvent.sequence.is_in(list(sequences)))
                .run()
            )

    async def mark_failed(self, sequence: int, owner: str, error: str, until: datetime) -> int | None:
        """Count a failed publish that was the event's fault, if ``owner`` still holds the row (so an
        attempt is counted once, by the one instance that made it), and hold it until ``until``.
        Returns the attempts now counted, or ``None`` when the lease was lost."""
        rows = await (
            ConnectionKeyEvent.update(
                {
                    ConnectionKeyEvent.publish_attempts: ConnectionKeyEvent.publish_attempts + 1,
                    ConnectionKeyEvent.last_error: error[:500],
                    ConnectionKeyEvent.lease_until: until,
                }
            )
            .where((ConnectionKeyEvent.sequence == sequence) & (ConnectionKeyEvent.lease_owner == owner))
            .returning(ConnectionKeyEvent.publish_attempts)
            .run()
        )
        return rows[0]["publish_attempts"] if rows else None

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
