"""Profile use cases: read and upsert."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import msgspec

from app.db.profile_store import ProfileRecord, ProfileStore
from app.domain.quiz import ProfileInput
from app.errors import ErrorCode, ServiceError

__all__ = ["ProfileService", "parse_profile_input"]


def parse_profile_input(data: Mapping[str, Any]) -> ProfileInput:
    """Validate a camelCase mapping into :class:`ProfileInput`; BAD_USER_INPUT names the bad field."""
    try:
        return msgspec.convert(data, ProfileInput)
    except msgspec.ValidationError as exc:
        raise ServiceError(ErrorCode.BAD_USER_INPUT, f"Invalid profile: {exc}") from None


class ProfileService:
    """Profiles are written by their owner (GraphQL) or synced by a backend (REST, service role)."""

    def __init__(self, store: ProfileStore, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    async def get(self, user_id: uuid.UUID) -> ProfileRecord | None:
        return await self._store.get_profile(user_id)

    async def upsert(self, user_id: uuid.UUID, data: ProfileInput) -> ProfileRecord:
        """Replace the profile of ``user_id`` with ``data`` (validated already)."""
        for pair in data.prompts:
            if not pair.question.strip() or not pair.answer.strip():
                raise ServiceError(ErrorCode.BAD_USER_INPUT, "Prompt questions and answers cannot be blank.")
        for preference in data.consent_preferences:
            if not preference.topic.strip() or not preference.statement.strip():
                raise ServiceError(ErrorCode.BAD_USER_INPUT, "Consent topics and statements cannot be blank.")
        if not data.display_name.strip():
            raise ServiceError(ErrorCode.BAD_USER_INPUT, "displayName cannot be blank.")
        return await self._store.upsert_profile(user_id, data, self._clock())
