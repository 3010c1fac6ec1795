"""Storage of the audit chain (``audit_log``) and of its sealed segments (``audit_segments``).

Appends are serialised so two writers can never link to the same predecessor (a forked chain):
on PostgreSQL a transaction-scoped advisory lock is taken before the tail is read; on SQLite the
write transaction (``BEGIN IMMEDIATE``, see ``Database.transaction``) already admits one writer at a
time. Either way the lock lasts until the caller's transaction commits or rolls back, so the entry and
the change it audits are committed together and in chain order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
from piccolo.engine.sqlite import SQLiteEngine

from app.db.bulk_insert import insert_rows
from app.db.tables import AuditLogEntry, AuditSegment
from app.domain.audit_chain import GENESIS_HASH, AuditEntry

__all__ = ["AUDIT_EXPORT_LOCK_KEY", "AUDIT_LOCK_KEY", "AuditStore", "SegmentRecord", "entry_of"]

AUDIT_LOCK_KEY = 0x434B_4155_4449_5431
"""``pg_advisory_xact_lock`` key of the chain tail: "CKAUDIT1" in ASCII, a 64-bit constant unique to this use."""
AUDIT_EXPORT_LOCK_KEY = 0x434B_4155_4449_5445
"""``pg_try_advisory_lock`` key of segment export: "CKAUDITE" in ASCII, a 64-bit constant unique to this use."""

_COLUMNS = (
    AuditLogEntry.id,
    AuditLogEntry.sequence,
    AuditLogEntry.occurred_at,
    AuditLogEntry.actor_kind,
    AuditLogEntry.actor_id,
    AuditLogEntry.action,
    AuditLogEntry.subject_type,
    AuditLogEntry.subject_id,
    AuditLogEntry.request_id,
    AuditLogEntry.trace_id,
    AuditLogEntry.change_digest,
    AuditLogEntry.previous_hash,
    AuditLogEntry.entry_hash,
)


def _uuid(value: Any) -> uuid.UUID | None:
    # SQLite hands back text, PostgreSQL a UUID.
    return None if value is None else uuid.UUID(str(value))


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    # Normalised to UTC: both drivers then give the same datetime, so exported bytes match too.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def entry_of(row: dict[str, Any]) -> AuditEntry:
    """The chain entry stored in an ``audit_log`` row."""
    return AuditEntry(
        id=uuid.UUID(str(row["id"])),
        sequence=int(row["sequence"]),
        occurred_at=_aware(row["occurred_at"]),
        actor_kind=row["actor_kind"],
        actor_id=_uuid(row["actor_id"]),
        action=row["action"],
        subject_type=row["subject_type"],
        subject_id=_uuid(row["subject_id"]),
        request_id=row["request_id"],
        trace_id=row["trace_id"],
        change_digest=row["change_digest"],
        previous_hash=row["previous_hash"],
        entry_hash=row["entry_hash"],
    )


class SegmentRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A sealed, uploaded segment as recorded in ``audit_segments``."""

    id: uuid.UUID
    first_sequence: int
    last_sequence: int
    entry_count: int
    first_previous_hash: str
    last_entry_hash: str
    body_sha256: str
    bucket: str
    object_key: str
    manifest_key: str
    version_id: str | None
    retain_until: datetime
    sealed_at: datetime


class AuditStore:
    """Reads and appends ``audit_log`` rows and ``audit_segments`` records."""

    def __init__(self) -> None:
        self._export_lock = asyncio.Lock()

    @asynccontextmanager
    async def export_lock(self) -> AsyncIterator[bool]:
        """Try to become the only exporter; yields whether it did (never waits). On PostgreSQL a
        session-level advisory lock held on a connection of its own (so every instance and the CLI
        are serialised, and the lock goes with the connection if this process dies); on SQLite, where
        one process is the usual deployment, a lock of this store's (concurrent exports in other
        processes are made harmless by the exporter itself)."""
        engine = AuditLogEntry._meta.db
        if isinstance(engine, SQLiteEngine):
            if self._export_lock.locked():
                yield False
                return
            async with self._export_lock:
                yield True
            return
        connection = await engine.get_new_connection()
        try:
            acquired = bool(await connection.fetchval("SELECT pg_try_advisory_lock($1)", AUDIT_EXPORT_LOCK_KEY))
            try:
                yield acquired
            finally:
                if acquired:
                    await connection.execute("SELECT pg_advisory_unlock($1)", AUDIT_EXPORT_LOCK_KEY)
        finally:
            await connection.close()

    async def lock_tail(self) -> None:
        """Serialise appenders until the current transaction ends (a no-op on SQLite, whose write
        transaction is already exclusive). Must be called inside a transaction."""
        engine = AuditLogEntry._meta.db
        if isinstance(engine, SQLiteEngine):
            return
        await engine.run_ddl(f"SELECT pg_advisory_xact_lock({AUDIT_LOCK_KEY})")

    async def tail(self) -> tuple[int, str]:
        """``(last sequence, last entry hash)``, or ``(0, GENESIS_HASH)`` for an empty log."""
        rows = (
            await AuditLogEntry.select(AuditLogEntry.sequence, AuditLogEntry.entry_hash)
            .order_by(AuditLogEntry.sequence, ascending=False)
            .limit(1)
            .run()
        )
        if not rows:
            return 0, GENESIS_HASH
        return int(rows[0]["sequence"]), rows[0]["entry_hash"]

    async def append(self, entry: AuditEntry) -> None:
        """Insert one sealed entry (the caller holds the tail lock)."""
        await insert_rows(
            AuditLogEntry,
            _COLUMNS,
            [
                (
                    entry.id,
                    entry.sequence,
                    entry.occurred_at,
                    entry.actor_kind,
                    entry.actor_id,
                    entry.action,
                    entry.subject_type,
                    entry.subject_id,
                    entry.request_id,
                    entry.trace_id,
                    entry.change_digest,
                    entry.previous_hash,
                    entry.entry_hash,
                )
            ],
        )

    async def count(self) -> int:
        return int(await AuditLogEntry.count().run())

    async def batch(self, after_sequence: int, limit: int, up_to: int | None = None) -> list[AuditEntry]:
        """Up to ``limit`` entries with sequence > ``after_sequence`` (and <= ``up_to``), in order."""
        query = AuditLogEntry.select(*_COLUMNS).where(AuditLogEntry.sequence > after_sequence)
        if up_to is not None:
            query = query.where(AuditLogEntry.sequence <= up_to)
        rows = await query.order_by(AuditLogEntry.sequence).limit(limit).run()
        return [entry_of(row) for row in rows]

    async def stream(self, batch_size: int, after_sequence: int = 0) -> AsyncIterator[list[AuditEntry]]:
        """Every entry after ``after_sequence``, in order, ``batch_size`` at a time (keyset pagination,
        so memory stays flat however long the chain)."""
        while True:
            batch = await self.batch(after_sequence, batch_size)
            if not batch:
                return
            yield batch
            after_sequence = batch[-1].sequence

    async def last_segment(self) -> SegmentRecord | None:
        """The most recently sealed segment (the one the next must chain to)."""
        rows = await AuditSegment.select().order_by(AuditSegment.last_sequence, ascending=False).limit(1).run()
        return _segment_of(rows[0]) if rows else None

    async def segments(self) -> list[SegmentRecord]:
        rows = await AuditSegment.select().order_by(AuditSegment.first_sequence).run()
        return [_segment_of(row) for row in rows]

    async def record_segment(self, segment: SegmentRecord) -> None:
        t = AuditSegment
        await insert_rows(
            t,
            [
                t.id,
                t.first_sequence,
                t.last_sequence,
                t.entry_count,
                t.first_previous_hash,
                t.last_entry_hash,
                t.body_sha256,
                t.bucket,
                t.object_key,
                t.manifest_key,
                t.version_id,
                t.retain_until,
                t.sealed_at,
            ],
            [
                (
                    segment.id,
                    segment.first_sequence,
                    segment.last_sequence,
                    segment.entry_count,
                    segment.first_previous_hash,
                    segment.last_entry_hash,
                    segment.body_sha256,
                    segment.bucket,
                    segment.object_key,
                    segment.manifest_key,
                    segment.version_id,
                    segment.retain_until,
                    segment.sealed_at,
                )
            ],
        )


def _segment_of(row: dict[str, Any]) -> SegmentRecord:
    return SegmentRecord(
        id=uuid.UUID(str(row["id"])),
        first_sequence=int(row["first_sequence"]),
        last_sequence=int(row["last_sequence"]),
        entry_count=int(row["entry_count"]),
        first_previous_hash=row["first_previous_hash"],
        last_entry_hash=row["last_entry_hash"],
        body_sha256=row["body_sha256"],
        bucket=row["bucket"],
        object_key=row["object_key"],
        manifest_key=row["manifest_key"],
        version_id=row["version_id"],
        retain_until=_aware(row["retain_until"]),
        sealed_at=_aware(row["sealed_at"]),
    )
