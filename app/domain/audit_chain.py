"""The audit log's hash chain: entries, their canonical bytes, keyed change digests and verification.

Pure: no database, no clock, no I/O. Each entry holds the hash of the one before it, so changing,
inserting, reordering or removing an entry that has a successor breaks the chain at (or right after)
that point, and :func:`verify` names the first entry that no longer fits. Removing the newest entries
does not: what is left is still a valid chain, just a shorter one. Only a sealed segment (its recorded
last sequence and hash, and its archived copy) bounds the chain, so :func:`verify` alone cannot tell
that entries after the last sealed segment were deleted; neither can a chain rewritten end to end
with every hash recomputed, which only ``ck audit verify --against-archive`` detects.

The change itself is never stored: only ``HMAC-SHA256(digest_key, canonical JSON of the change)``.
A plain hash would let anyone holding the table test guesses of low-entropy PII (a birth year, a yes/no
preference) against the digest; the key turns that into a guess against a 256-bit secret.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

__all__ = [
    "CHAIN_VERSION",
    "GENESIS_HASH",
    "ActorKind",
    "AuditActor",
    "AuditEntry",
    "ChainBreak",
    "ChainVerifier",
    "canonical_entry_bytes",
    "change_digest",
    "compute_entry_hash",
    "format_timestamp",
    "seal_entry",
    "verify",
]

CHAIN_VERSION = 1
"""Bumped if the canonical encoding ever changes; part of every hashed entry."""
GENESIS_HASH = "0" * 64
"""The ``previous_hash`` of the first entry of a chain."""

ActorKind = Literal["user", "service", "moderator", "system"]


class AuditActor(msgspec.Struct, frozen=True):
    """Who did it: a user, a service-role backend, a moderator or the system itself (CLI, jobs)."""

    kind: ActorKind
    id: uuid.UUID | None

    @classmethod
    def from_principal(cls, principal: Any) -> AuditActor:
        """The actor for a verified :class:`app.auth.Principal`: moderator when ``principal.is_moderator``
        (its configured roles claim, ``[moderation] roles_claim``, holds ``[moderation] moderator_role``;
        a ``scope`` or ``role`` claim never makes a moderator), service for service-role tokens, else the
        user."""
        if getattr(principal, "is_moderator", False):
            return cls(kind="moderator", id=principal.user_id)
        if getattr(principal, "is_service_role", False):
            return cls(kind="service", id=principal.user_id)
        return cls(kind="user", id=principal.user_id)

    @classmethod
    def system(cls) -> AuditActor:
        """The service itself (CLI commands, background jobs)."""
        return cls(kind="system", id=None)


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One link of the chain, exactly as stored and exported."""

    id: uuid.UUID
    sequence: int
    occurred_at: datetime
    actor_kind: ActorKind
    actor_id: uuid.UUID | None
    action: str
    subject_type: str
    subject_id: uuid.UUID | None
    request_id: str | None
    trace_id: str | None
    change_digest: str | None
    previous_hash: str
    entry_hash: str


class ChainBreak(msgspec.Struct, frozen=True):
    """The first entry that does not fit the chain, and why. ``id`` is ``None`` only when the entry is
    missing altogether (the chain ends before a sealed segment does)."""

    sequence: int
    id: uuid.UUID | None
    reason: str


def format_timestamp(moment: datetime) -> str:
    """UTC, microsecond precision, fixed width: the same instant always encodes the same way, whatever
    offset or driver produced the datetime."""
    if moment.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _opt(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def canonical_entry_bytes(entry: AuditEntry, previous_hash: str | None = None) -> bytes:
    """The bytes the entry hash covers: every field but ``entry_hash``, in a fixed order, as a JSON
    array (no key ordering or float formatting to disagree on). ``previous_hash`` overrides the
    entry's own (verification hashes against the hash it expects, not the one the row claims)."""
    fields = [
        CHAIN_VERSION,
        str(entry.id),
        entry.sequence,
        format_timestamp(entry.occurred_at),
        entry.actor_kind,
        _opt(entry.actor_id),
        entry.action,
        entry.subject_type,
        _opt(entry.subject_id),
        entry.request_id,
        entry.trace_id,
        entry.change_digest,
        entry.previous_hash if previous_hash is None else previous_hash,
    ]
    return msgspec.json.encode(fields)


def compute_entry_hash(entry: AuditEntry, previous_hash: str | None = None) -> str:
    """Hex SHA-256 of :func:`canonical_entry_bytes`."""
    return hashlib.sha256(canonical_entry_bytes(entry, previous_hash)).hexdigest()


def change_digest(key: bytes, change: Mapping[str, Any] | None) -> str | None:
    """Hex HMAC-SHA256 of the change's canonical JSON (keys sorted), or ``None`` without a change.
    Raises ``TypeError`` for values JSON cannot hold, so a caller learns at once, not at verify time."""
    if change is None:
        return None
    try:
        body = msgspec.json.encode(change, order="sorted")
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"audit change is not JSON-encodable: {exc}") from None
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def seal_entry(
    *,
    entry_id: uuid.UUID,
    sequence: int,
    occurred_at: datetime,
    actor: AuditActor,
    action: str,
    subject_type: str,
    subject_id: uuid.UUID | None,
    request_id: str | None,
    trace_id: str | None,
    change_digest: str | None,
    previous_hash: str,
) -> AuditEntry:
    """A new entry linked to ``previous_hash``, with its own hash computed."""
    unsealed = AuditEntry(
        id=entry_id,
        sequence=sequence,
        occurred_at=occurred_at,
        actor_kind=actor.kind,
        actor_id=actor.id,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        request_id=request_id,
        trace_id=trace_id,
        change_digest=change_digest,
        previous_hash=previous_hash,
        entry_hash="",
    )
    return msgspec.structs.replace(unsealed, entry_hash=compute_entry_hash(unsealed))


class ChainVerifier:
    """Checks entries one at a time, so a chain of any length streams through in batches.

    ``start_hash``/``start_sequence`` let verification begin mid-chain (after a sealed segment)."""

    def __init__(self, start_hash: str = GENESIS_HASH, start_sequence: int = 1) -> None:
        self.expected_hash = start_hash
        self.expected_sequence = start_sequence
        self.checked = 0

    def feed(self, entry: AuditEntry) -> ChainBreak | None:
        """Check the next entry; a break is returned (and the verifier should not be fed further)."""
        if entry.sequence != self.expected_sequence:
            return ChainBreak(
                entry.sequence,
                entry.id,
                f"sequence {entry.sequence} where {self.expected_sequence} was expected (entry missing, inserted "
                "or reordered)",
            )
        if not hmac.compare_digest(entry.previous_hash, self.expected_hash):
            return ChainBreak(entry.sequence, entry.id, "previous_hash does not match the preceding entry's hash")
        if not hmac.compare_digest(entry.entry_hash, compute_entry_hash(entry)):
            return ChainBreak(entry.sequence, entry.id, "entry_hash does not match the entry's contents")
        self.expected_hash = entry.entry_hash
        self.expected_sequence += 1
        self.checked += 1
        return None


def verify(entries: Iterable[AuditEntry], start_hash: str = GENESIS_HASH, start_sequence: int = 1) -> ChainBreak | None:
    """The first broken entry of ``entries`` (in sequence order), or ``None`` when the chain holds."""
    verifier = ChainVerifier(start_hash, start_sequence)
    for entry in entries:
        broken = verifier.feed(entry)
        if broken is not None:
            return broken
    return None
