"""Device tokens for push notifications: rows <-> :class:`DeviceRecord`."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import msgspec

from app.db.tables import DeviceToken

__all__ = ["DeviceRecord", "DeviceStore"]


class DeviceRecord(msgspec.Struct, frozen=True):
    """A registered device."""

    id: uuid.UUID
    user_id: uuid.UUID
    platform: str
    token: str
    created_at: datetime
    updated_at: datetime
    last_error: str | None


def _record(row: dict[str, Any]) -> DeviceRecord:
    return DeviceRecord(
        id=uuid.UUID(str(row["id"])),
        user_id=uuid.UUID(str(row["user_id"])),
        platform=row["platform"],
        token=row["token"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_error=row["last_error"],
    )


class DeviceStore:
    """Registers, lists and prunes device tokens. A token is unique: registering one that another user
    holds moves it to the new user (the device changed hands or accounts)."""

    async def register(
        self, user_id: uuid.UUID, platform: str, token: str, now: datetime, *, max_per_user: int | None = None
    ) -> DeviceRecord:
        """Insert or reassign ``token`` (one statement, so safe under concurrent registration); with
        ``max_per_user``, the user's least recently registered devices beyond that many are removed."""
        t = DeviceToken
        values = {t.user_id: user_id, t.platform: platform, t.updated_at: now, t.last_error: None}
        row = t(id=uuid.uuid4(), token=token, created_at=now, **{col._meta.name: v for col, v in values.items()})
        await t.insert(row).on_conflict(target=t.token, action="DO UPDATE", values=list(values)).run()
        if max_per_user is not None:
            await self._trim(user_id, max_per_user)
        stored = await t.select().where(t.token == token).first().run()
        assert stored is not None
        return _record(stored)

    @staticmethod
    async def _trim(user_id: uuid.UUID, keep: int) -> None:
        t = DeviceToken
        rows = await t.select(t.id).where(t.user_id == user_id).order_by(t.updated_at, ascending=False).run()
        stale = [row["id"] for row in rows[keep:]]
        if stale:
            await t.delete().where(t.id.is_in(stale)).run()

    async def unregister(self, token: str, user_id: uuid.UUID | None = None) -> bool:
        """Remove ``token`` (only if ``user_id`` holds it, when given); ``True`` when a row went."""
        t = DeviceToken
        query = t.delete().where(t.token == token)
        if user_id is not None:
            query = query.where(t.user_id == user_id)
        rows = await query.returning(t.id).run()
        return bool(rows)

    async def tokens_for(self, user_ids: Collection[uuid.UUID]) -> list[DeviceRecord]:
        """Every device of these users, oldest registration first."""
        if not user_ids:
            return []
        t = DeviceToken
        rows = await t.select().where(t.user_id.is_in(list(user_ids))).order_by(t.created_at).run()
        return [_record(row) for row in rows]

    async def prune(self, tokens: Collection[str]) -> int:
        """Delete these tokens (dead ones a push service refused); returns how many rows went."""
        if not tokens:
            return 0
        t = DeviceToken
        rows = await t.delete().where(t.token.is_in(list(tokens))).returning(t.id).run()
        return len(rows)

    async def record_errors(self, errors: Mapping[str, str], now: datetime) -> None:
        """Remember the last failed send per token (a short, token-free reason)."""
        t = DeviceToken
        for token, error in errors.items():
            await t.update({t.last_error: error[:500], t.updated_at: now}).where(t.token == token).run()
