"""Profile use cases: read and upsert (audited, sealed with the owner's data key)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from app.db.engine import Database
from app.db.profile_store import ProfileRecord, ProfileStore
from app.domain.audit_chain import AuditActor
from app.domain.field_crypto import KeyDestroyedError
from app.domain.quiz import ProfileInput
from app.errors import ErrorCode, ServiceError

if TYPE_CHECKING:
    from app.services.audit import AuditLog

__all__ = ["ProfileService", "erased_account", "parse_profile_input"]


def parse_profile_input(data: Mapping[str, Any]) -> ProfileInput:
    """Validate a camelCase mapping into :class:`ProfileInput`; BAD_USER_INPUT names the bad field."""
    try:
        return msgspec.convert(data, ProfileInput)
    except msgspec.ValidationError as exc:
        raise ServiceError(ErrorCode.BAD_USER_INPUT, f"Invalid profile: {exc}") from None


def erased_account() -> ServiceError:
    """The typed refusal for writes by or about a user whose data key was destroyed."""
    return ServiceError(ErrorCode.FORBIDDEN, "This account has been erased.")


class ProfileService:
    """Profiles are written by their owner (GraphQL) or synced by a backend (REST, service role)."""

    def __init__(self, store: ProfileStore, clock: Callable[[], datetime], db: Database, audit: AuditLog) -> None:
        self._store = store
        self._clock = clock
        self._db = db
        self._audit = audit

    async def get(self, user_id: uuid.UUID) -> ProfileRecord | None:
        return await self._store.get_profile(user_id)

    async def upsert(self, user_id: uuid.UUID, data: ProfileInput, *, actor: AuditActor | None = None) -> ProfileRecord:
        """Replace the profile of ``user_id`` with ``data`` (validated already); the write and its
        ``profile.updated`` audit entry commit together. ``actor`` defaults to the owner."""
        for pair in data.prompts:
            if not pair.question.strip() or not pair.answer.strip():
                raise ServiceError(ErrorCode.BAD_USER_INPUT, "Prompt questions and answers cannot be blank.")
        for preference in data.consent_preferences:
            if not preference.topic.strip() or not preference.statement.strip():
                raise ServiceError(ErrorCode.BAD_USER_INPUT, "Consent topics and statements cannot be blank.")
        if not data.display_name.strip():
            raise ServiceError(ErrorCode.BAD_USER_INPUT, "displayName cannot be blank.")
        try:
            # The data key is made (and committed) first, so the transaction below only reads it.
            await self._store.encryption.keyring([user_id], create=True)

            async def write() -> ProfileRecord:
                record = await self._store.upsert_profile(user_id, data, self._clock())
                await self._audit.record(
                    actor=actor or AuditActor(kind="user", id=user_id),
                    action="profile.updated",
                    subject_type="profile",
                    subject_id=user_id,
                    change=msgspec.to_builtins(data),
                )
                return record

            # On a task of its own: a client that cancels mid-way cannot leave the writer half-used.
            record = await self._db.write(write)
        except KeyDestroyedError:
            raise erased_account() from None
        return record
