"""``user_data_keys`` rows <-> :class:`DataKeyRow`: wrapped per-user data keys and their tombstones."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

import msgspec

from app.db.bulk_insert import insert_rows
from app.db.tables import UserDataKey

__all__ = ["DataKeyRow", "DataKeyStore", "KeyCounts"]


class DataKeyRow(msgspec.Struct, frozen=True):
    """A stored data key. ``wrapped_key is None`` means destroyed (``destroyed_at`` says when)."""

    user_id: uuid.UUID
    key_id: str | None
    kek_id: str | None
    wrapped_key: bytes | None
    previous_key_id: str | None
    previous_kek_id: str | None
    previous_wrapped_key: bytes | None
    version: int
    created_at: datetime
    rotated_at: datetime | None
    destroyed_at: datetime | None


class KeyCounts(msgspec.Struct, frozen=True):
    """``ck keys status``: data keys per KEK; a KEK may be retired once it is in neither map."""

    current: dict[str, int]
    previous: dict[str, int]
    destroyed: int


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _text(data: bytes | None) -> str | None:
    return None if data is None else base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _row(row: dict[str, Any]) -> DataKeyRow:
    return DataKeyRow(
        user_id=uuid.UUID(str(row["user_id"])),
        key_id=row["key_id"],
        kek_id=row["kek_id"],
        wrapped_key=_bytes(row["wrapped_key"]),
        previous_key_id=row["previous_key_id"],
        previous_kek_id=row["previous_kek_id"],
        previous_wrapped_key=_bytes(row["previous_wrapped_key"]),
        version=row["version"],
        created_at=row["created_at"],
        rotated_at=row["rotated_at"],
        destroyed_at=row["destroyed_at"],
    )


class DataKeyStore:
    """Reads and writes wrapped data keys; every batch operation is one statement."""

    async def get_many(self, user_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, DataKeyRow]:
        if not user_ids:
            return {}
        rows = await UserDataKey.select().where(UserDataKey.user_id.is_in(list(user_ids))).run()
        return {record.user_id: record for record in map(_row, rows)}

    async def insert_new(self, rows: Collection[tuple[uuid.UUID, str, str, bytes]], now: datetime) -> None:
        """Insert (user id, key id, KEK id, wrapped key) rows; a user who already has a row (another
        request or instance won the race, or an erased user's tombstone) keeps it."""
        t = UserDataKey
        columns = [t.user_id, t.key_id, t.kek_id, t.wrapped_key, t.version, t.created_at]
        values = [(user, key_id, kek_id, _text(wrapped), 1, now) for user, key_id, kek_id, wrapped in rows]
        await insert_rows(t, columns, values, suffix='ON CONFLICT ("user_id") DO NOTHING')

    async def destroy(self, user_id: uuid.UUID, now: datetime) -> bool:
        """Delete the user's wrapped keys, leaving a tombstone. ``True`` when a live key was destroyed now."""
        t = UserDataKey
        destroyed = (
            await t.update(
                {
                    t.key_id: None,
                    t.kek_id: None,
                    t.wrapped_key: None,
                    t.previous_key_id: None,
                    t.previous_kek_id: None,
                    t.previous_wrapped_key: None,
                    t.destroyed_at: now,
                }
            )
            .where((t.user_id == user_id) & t.destroyed_at.is_null())
            .returning(t.user_id)
            .run()
        )
        if destroyed:
            return True
        # No row yet (a user with no encrypted data): a tombstone still stops a key being made later.
        await insert_rows(
            t,
            [t.user_id, t.version, t.created_at, t.destroyed_at],
            [(user_id, 0, now, now)],
            suffix='ON CONFLICT ("user_id") DO NOTHING',
        )
        return False

    async def is_destroyed(self, user_id: uuid.UUID) -> bool:
        row = await UserDataKey.select(UserDataKey.destroyed_at).where(UserDataKey.user_id == user_id).first().run()
        return row is not None and row["destroyed_at"] is not None

    async def rewrap(self, row: DataKeyRow, kek_id: str, wrapped: bytes, previous_wrapped: bytes | None) -> bool:
        """Store keys re-wrapped under ``kek_id`` unless the row changed meanwhile (then ``False``: a
        data rotation or erasure won, and the next pass looks again)."""
        t = UserDataKey
        changed = (
            await t.update(
                {
                    t.kek_id: kek_id,
                    t.wrapped_key: _text(wrapped),
                    t.previous_kek_id: kek_id if previous_wrapped is not None else None,
                    t.previous_wrapped_key: _text(previous_wrapped),
                }
            )
            .where((t.user_id == row.user_id) & (t.wrapped_key == _text(row.wrapped_key)) & t.destroyed_at.is_null())
            .returning(t.user_id)
            .run()
        )
        return bool(changed)

    async def replace(self, row: DataKeyRow, key_id: str, kek_id: str, wrapped: bytes, now: datetime) -> bool:
        """Make a new data key current and the old current one previous (data rotation), unless the row
        changed meanwhile."""
        t = UserDataKey
        changed = (
            await t.update(
                {
                    t.key_id: key_id,
                    t.kek_id: kek_id,
                    t.wrapped_key: _text(wrapped),
                    t.previous_key_id: row.key_id,
                    t.previous_kek_id: row.kek_id,
                    t.previous_wrapped_key: _text(row.wrapped_key),
                    t.version: row.version + 1,
                    t.created_at: now,
                    t.rotated_at: now,
                }
            )
            .where((t.user_id == row.user_id) & (t.key_id == row.key_id) & t.destroyed_at.is_null())
            .returning(t.user_id)
            .run()
        )
        return bool(changed)

    async def not_wrapped_by(self, kek_id: str, limit: int) -> list[DataKeyRow]:
        """Live keys (current or previous) wrapped by another KEK than ``kek_id``, oldest first."""
        t = UserDataKey
        rows = (
            await t.select()
            .where(
                t.destroyed_at.is_null()
                & ((t.kek_id != kek_id) | (t.previous_wrapped_key.is_not_null() & (t.previous_kek_id != kek_id)))
            )
            .order_by(t.user_id)
            .limit(limit)
            .run()
        )
        return [_row(row) for row in rows]

    async def created_before(self, cutoff: datetime, limit: int) -> list[DataKeyRow]:
        """Live keys made before ``cutoff`` (data rotation: rotated ones get a new ``created_at``)."""
        t = UserDataKey
        rows = (
            await t.select()
            .where(t.destroyed_at.is_null() & (t.created_at < cutoff))
            .order_by(t.user_id)
            .limit(limit)
            .run()
        )
        return [_row(row) for row in rows]

    async def count_by_kek(self) -> KeyCounts:
        """Live data keys per wrapping KEK (current and previous generation apart) and erased users."""
        t = UserDataKey
        current = await t.raw(
            "SELECT kek_id, count(*) AS n FROM user_data_keys WHERE destroyed_at IS NULL GROUP BY kek_id"
        ).run()
        previous = await t.raw(
            "SELECT previous_kek_id AS kek_id, count(*) AS n FROM user_data_keys "
            "WHERE destroyed_at IS NULL AND previous_wrapped_key IS NOT NULL GROUP BY previous_kek_id"
        ).run()
        destroyed = await t.count().where(t.destroyed_at.is_not_null()).run()
        return KeyCounts(
            current={row["kek_id"]: int(row["n"]) for row in current},
            previous={row["kek_id"]: int(row["n"]) for row in previous},
            destroyed=destroyed,
        )
