"""Profiles and conversations: rows <-> domain Structs."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

import msgspec

from app.db.tables import Conversation, Profile
from app.domain.quiz import ConsentPreference, ProfileInput, PromptPair, TargetProfile, UnlockState

__all__ = ["ConversationRecord", "ProfileRecord", "ProfileStore", "pair_of"]

_prompts = msgspec.json.Decoder(list[PromptPair])
_consents = msgspec.json.Decoder(list[ConsentPreference])
_segments = msgspec.json.Decoder(dict[str, str])


class ProfileRecord(msgspec.Struct, frozen=True, rename="camel"):
    """A stored profile."""

    user_id: uuid.UUID
    display_name: str
    bio: str | None
    prompts: list[PromptPair]
    consent_preferences: list[ConsentPreference]
    locale: str | None
    demographic_segments: dict[str, str]
    updated_at: datetime

    def as_target(self) -> TargetProfile:
        return TargetProfile(self.user_id, self.display_name, self.prompts, self.consent_preferences, self.locale)


class ConversationRecord(msgspec.Struct, frozen=True):
    """A stored conversation between two participants."""

    id: uuid.UUID
    participant_ids: list[uuid.UUID]
    unlock_state: UnlockState
    unlocked_at: datetime | None
    updated_at: datetime


def pair_of(a: uuid.UUID, b: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """The participants in canonical order, so each pair has exactly one conversation row."""
    return (a, b) if str(a) < str(b) else (b, a)


def _profile(row: dict[str, Any]) -> ProfileRecord:
    return ProfileRecord(
        user_id=row["user_id"],
        display_name=row["display_name"],
        bio=row["bio"],
        prompts=_prompts.decode(row["prompts"]),
        consent_preferences=_consents.decode(row["consent_preferences"]),
        locale=row["locale"],
        demographic_segments=_segments.decode(row["demographic_segments"]),
        updated_at=row["updated_at"],
    )


def conversation_record(row: dict[str, Any]) -> ConversationRecord:
    """Map a ``conversations`` row."""
    return ConversationRecord(
        id=row["id"],
        participant_ids=[row["participant_low"], row["participant_high"]],
        unlock_state=UnlockState(row["unlock_state"]),
        unlocked_at=row["unlocked_at"],
        updated_at=row["updated_at"],
    )


class ProfileStore:
    """Reads and writes profiles and conversations."""

    async def get_profile(self, user_id: uuid.UUID) -> ProfileRecord | None:
        row = await Profile.select().where(Profile.user_id == user_id).first().run()
        return _profile(row) if row else None

    async def upsert_profile(self, user_id: uuid.UUID, data: ProfileInput, now: datetime) -> ProfileRecord:
        """Insert or replace the profile of ``user_id`` (one statement, so never half-written)."""
        values = {
            Profile.display_name: data.display_name,
            Profile.bio: data.bio,
            Profile.prompts: msgspec.json.encode(data.prompts).decode(),
            Profile.consent_preferences: msgspec.json.encode(data.consent_preferences).decode(),
            Profile.locale: data.locale,
            Profile.demographic_segments: msgspec.json.encode(data.demographic_segments).decode(),
            Profile.updated_at: now,
        }
        row = Profile(user_id=user_id, created_at=now, **{col._meta.name: value for col, value in values.items()})
        await Profile.insert(row).on_conflict(target=Profile.user_id, action="DO UPDATE", values=list(values)).run()
        profile = await self.get_profile(user_id)
        assert profile is not None
        return profile

    async def get_conversation(self, conversation_id: uuid.UUID) -> ConversationRecord | None:
        row = await Conversation.select().where(Conversation.id == conversation_id).first().run()
        return conversation_record(row) if row else None

    async def get_conversations(self, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, ConversationRecord]:
        """Conversations by id (missing ids are absent from the result)."""
        if not ids:
            return {}
        rows = await Conversation.select().where(Conversation.id.is_in(list(ids))).run()
        return {row["id"]: conversation_record(row) for row in rows}

    async def get_or_create_conversation(self, a: uuid.UUID, b: uuid.UUID, now: datetime) -> ConversationRecord:
        """The pair's conversation, created LOCKED on first use; safe under concurrent first use."""
        low, high = pair_of(a, b)
        pair_key = f"{low}:{high}"
        row = await Conversation.select().where(Conversation.pair_key == pair_key).first().run()
        if row is None:
            await (
                Conversation.insert(
                    Conversation(
                        id=uuid.uuid4(),
                        pair_key=pair_key,
                        participant_low=low,
                        participant_high=high,
                        unlock_state=UnlockState.LOCKED.value,
                        created_at=now,
                        updated_at=now,
                    )
                )
                .on_conflict(target=Conversation.pair_key, action="DO NOTHING")
                .run()
            )
            row = await Conversation.select().where(Conversation.pair_key == pair_key).first().run()
        return conversation_record(row)
