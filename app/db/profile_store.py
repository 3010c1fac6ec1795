"""Profiles and conversations: rows <-> domain Structs. Profile PII is sealed with the owner's data key."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from app.db.tables import Conversation, Profile, UserDataKey
from app.domain.field_crypto import KeyDestroyedError, Keyring
from app.domain.quiz import ConsentPreference, ProfileInput, PromptPair, TargetProfile, UnlockState

if TYPE_CHECKING:
    from app.services.encryption import FieldEncryption

__all__ = ["PROFILE_SEALED_COLUMNS", "ConversationRecord", "ProfileRecord", "ProfileStore", "pair_of"]

PROFILE_TABLE = "profiles"
PROFILE_SEALED_COLUMNS = ("display_name", "bio", "prompts", "consent_preferences", "demographic_segments")
"""Columns of ``profiles`` stored as ciphertext under the owner's data key (record id: ``user_id``)."""

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


def _profile(row: dict[str, Any], keyring: Keyring) -> ProfileRecord:
    user_id = row["user_id"]
    plain = keyring.open_columns(user_id, PROFILE_TABLE, user_id, {c: row[c] for c in PROFILE_SEALED_COLUMNS})
    return ProfileRecord(
        user_id=user_id,
        display_name=plain["display_name"] or "",
        bio=plain["bio"],
        prompts=_prompts.decode(plain["prompts"] or "[]"),
        consent_preferences=_consents.decode(plain["consent_preferences"] or "[]"),
        locale=row["locale"],
        demographic_segments=_segments.decode(plain["demographic_segments"] or "{}"),
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


async def _key_destroyed(user_id: uuid.UUID) -> bool:
    """Whether the owner's key row is a tombstone, read from the database (``FOR UPDATE`` on PostgreSQL,
    so a concurrent erasure's destroy and this caller's transaction take turns; SQLite's write
    transactions are serialized already)."""
    query = UserDataKey.select(UserDataKey.destroyed_at).where(UserDataKey.user_id == user_id)
    if UserDataKey._meta.db.engine_type != "sqlite":
        query = query.lock_rows()
    rows = await query.run()
    return bool(rows) and rows[0]["destroyed_at"] is not None


class ProfileStore:
    """Reads and writes profiles (sealed with the owner's data key) and conversations."""

    def __init__(self, encryption: FieldEncryption) -> None:
        self.encryption = encryption

    async def get_profile(self, user_id: uuid.UUID) -> ProfileRecord | None:
        """The profile, decrypted; ``None`` when there is none or its owner was erased (erasure deletes the
        row, but a row left behind, e.g. by a write that raced the erasure, is unreadable and reads as none).
        Values sealed with a key newer than this process's cached one (a rotation elsewhere) reload it."""
        row = await Profile.select().where(Profile.user_id == user_id).first().run()
        if not row:
            return None
        keyring = await self.encryption.keyring_covering({user_id: [row[c] for c in PROFILE_SEALED_COLUMNS]})
        if keyring.is_destroyed(user_id):
            return None
        return _profile(row, keyring)

    async def delete_profile(self, user_id: uuid.UUID) -> bool:
        """Remove the profile row (erasure); ``True`` when one existed."""
        return bool(await Profile.delete().where(Profile.user_id == user_id).returning(Profile.user_id).run())

    async def upsert_profile(self, user_id: uuid.UUID, data: ProfileInput, now: datetime) -> ProfileRecord:
        """Insert or replace the profile of ``user_id`` (one statement, so never half-written).

        Raises :class:`app.domain.field_crypto.KeyDestroyedError` for an erased user, also one erased
        after the keys were read (cached): the owner's key row is read again (locked on PostgreSQL) before
        the write, so run this inside the transaction that commits it and an erasure either finished
        before (refused here) or waits for this write and then deletes the row."""
        keyring = await self.encryption.keyring([user_id], create=True)
        if keyring.is_destroyed(user_id) or await _key_destroyed(user_id):
            raise KeyDestroyedError("the owner's data key was destroyed")
        sealed = keyring.seal_columns(
            user_id,
            PROFILE_TABLE,
            user_id,
            {
                "display_name": data.display_name,
                "bio": data.bio,
                "prompts": msgspec.json.encode(data.prompts).decode(),
                "consent_preferences": msgspec.json.encode(data.consent_preferences).decode(),
                "demographic_segments": msgspec.json.encode(data.demographic_segments).decode(),
            },
        )
        values = {
            Profile.display_name: sealed["display_name"],
            Profile.bio: sealed["bio"],
            Profile.prompts: sealed["prompts"],
            Profile.consent_preferences: sealed["consent_preferences"],
            Profile.locale: data.locale,
            Profile.demographic_segments: sealed["demographic_segments"],
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
