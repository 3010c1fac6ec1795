"""Profiles and conversations: rows <-> domain Structs. Profile PII is sealed with the owner's data key."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
from piccolo.querystring import QueryString

from app.db.tables import (
    Conversation,
    ConversationRequesterState,
    ModerationDecision,
    Profile,
    UserDataKey,
    requester_state_id,
)
from app.domain.field_crypto import KeyDestroyedError, Keyring
from app.domain.moderation_rules import OverrideDecision
from app.domain.quiz import ConsentPreference, ProfileInput, PromptPair, TargetProfile, UnlockState
from app.domain.requester_state import RequesterState

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
    """LOCKED or UNLOCKED; each requester's retry state is in :class:`RequesterState`."""
    unlocked_at: datetime | None
    updated_at: datetime
    moderation_locked_at: datetime | None = None
    """When a moderator's LOCK (still in force) was decided; ``None`` when no lock holds."""


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
        moderation_locked_at=row.get("moderation_locked_at"),
    )


def _requester_state(row: dict[str, Any]) -> RequesterState:
    return RequesterState(
        conversation_id=row["conversation_id"],
        requester_id=row["requester_id"],
        unlock_state=UnlockState(row["unlock_state"]),
        retry_available_at=row["retry_available_at"],
        attempt_id=row["attempt_id"],
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

    async def lock_conversations(self, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, ConversationRecord]:
        """Like :meth:`get_conversations`, for a transaction about to change them: the rows are locked
        (``FOR UPDATE``) on PostgreSQL until it ends; SQLite's write transaction holds the database."""
        if not ids:
            return {}
        query = Conversation.select().where(Conversation.id.is_in(sorted(ids)))
        if Conversation._meta.db.engine_type != "sqlite":
            query = query.lock_rows()
        rows = await query.run()
        return {row["id"]: conversation_record(row) for row in rows}

    async def unlock_conversation(self, conversation_id: uuid.UUID, now: datetime) -> bool:
        """Compare-and-set: UNLOCKED if it is not already and no moderator's lock holds. ``False`` when
        a concurrent change (a moderator's LOCK) won: that decision is never overwritten."""
        rows = await (
            Conversation.update(
                {
                    Conversation.unlock_state: UnlockState.UNLOCKED.value,
                    Conversation.unlocked_at: now,
                    Conversation.updated_at: now,
                }
            )
            .where(
                (Conversation.id == conversation_id)
                & (Conversation.unlock_state != UnlockState.UNLOCKED.value)
                & Conversation.moderation_locked_at.is_null()
            )
            .returning(Conversation.id)
            .run()
        )
        return bool(rows)

    async def set_requester_states(self, states: Collection[RequesterState]) -> None:
        """Record each requester's own state (one row per conversation and requester, replaced)."""
        t = ConversationRequesterState
        for state in states:
            row = t(
                id=requester_state_id(state.conversation_id, state.requester_id),
                conversation_id=state.conversation_id,
                requester_id=state.requester_id,
                unlock_state=state.unlock_state.value,
                retry_available_at=state.retry_available_at,
                attempt_id=state.attempt_id,
                updated_at=state.updated_at,
            )
            await (
                t.insert(row)
                .on_conflict(
                    target=t.id,
                    action="DO UPDATE",
                    values=[t.unlock_state, t.retry_available_at, t.attempt_id, t.updated_at],
                )
                .run()
            )

    async def requester_state(self, conversation_id: uuid.UUID, requester_id: uuid.UUID) -> RequesterState | None:
        """The requester's own state in the conversation, if they ever took its quiz."""
        t = ConversationRequesterState
        row = await t.select().where(t.id == requester_state_id(conversation_id, requester_id)).first().run()
        return _requester_state(row) if row else None

    async def moderation_history(
        self, ids: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, list[tuple[OverrideDecision, datetime]]]:
        """Each conversation's moderator decisions (what and when), for
        :func:`app.domain.moderation_rules.lock_covers`; conversations without any are absent."""
        if not ids:
            return {}
        t = ModerationDecision
        rows = await (
            t.select(t.conversation_id, t.decision, t.decided_at).where(t.conversation_id.is_in(sorted(ids))).run()
        )
        history: dict[uuid.UUID, list[tuple[OverrideDecision, datetime]]] = {}
        for row in rows:
            history.setdefault(uuid.UUID(str(row["conversation_id"])), []).append(
                (OverrideDecision(row["decision"]), row["decided_at"])
            )
        return history

    async def passed_but_locked(self, submitted_before: datetime, limit: int) -> list[dict[str, Any]]:
        """Passed attempts submitted before ``submitted_before`` whose conversation is still not UNLOCKED,
        with no moderator's lock on it and no LOCK covering the attempt (the SQL form of
        :func:`app.domain.moderation_rules.lock_covers`: no LOCK decided at or after it, nor one decided
        before it and not lifted by then): unlocks that were lost. Oldest first; each row has the
        attempt's ids, score and ``submitted_at``."""
        return await Conversation._meta.db.run_querystring(
            QueryString(
                """SELECT a."id", a."connection_key_id", a."conversation_id", a."requester_id", a."target_id",
                          a."score", a."submitted_at"
                FROM "connection_key_attempts" a JOIN "conversations" c ON c."id" = a."conversation_id"
                WHERE a."passed" = {} AND c."unlock_state" <> 'UNLOCKED' AND c."moderation_locked_at" IS NULL
                  AND a."submitted_at" < {}
                  AND NOT EXISTS (
                    SELECT 1 FROM "moderation_decisions" d
                    WHERE d."conversation_id" = a."conversation_id" AND d."decision" = 'LOCK'
                      AND NOT EXISTS (
                        SELECT 1 FROM "moderation_decisions" l
                        WHERE l."conversation_id" = d."conversation_id" AND l."decision" <> 'LOCK'
                          AND l."decided_at" > d."decided_at" AND l."decided_at" <= a."submitted_at"))
                ORDER BY a."submitted_at" LIMIT {}""",
                True,
                submitted_before,
                limit,
            )
        )

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
