"""``AuditLog``: the one way anything writes to the tamper-evident audit chain.

Call :meth:`AuditLog.record` inside the transaction of the change it audits, so the two commit or roll
back together. Outside a transaction it opens its own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import msgspec
import structlog

from app.db.audit_store import AuditStore
from app.db.engine import Database
from app.domain.audit_chain import AuditActor, AuditEntry, ChainBreak, ChainVerifier, change_digest, seal_entry

__all__ = ["AuditLog", "VerifyReport", "verify_chain"]

log = structlog.get_logger(__name__)
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_SUBJECT_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,59}$")


def _context_id(context: Mapping[str, Any], name: str) -> str | None:
    value = context.get(name)
    return None if value is None else str(value)[:64]


class AuditLog:
    """Appends hash-chained entries; the change is kept only as a keyed digest."""

    def __init__(self, db: Database, store: AuditStore, digest_key: bytes, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._store = store
        self._digest_key = digest_key
        self._clock = clock

    @property
    def store(self) -> AuditStore:
        return self._store

    async def record(
        self,
        *,
        actor: AuditActor,
        action: str,
        subject_type: str,
        subject_id: uuid.UUID | None,
        change: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry and return it. ``action`` is a dotted verb (``"profile.updated"``),
        ``subject_type`` a lower-case noun (``"profile"``); ``change`` may hold PII: only its HMAC is
        stored. Request and trace ids come from the structlog context bound for the request."""
        if not _ACTION.match(action) or len(action) > 80:
            raise ValueError(f"audit action must be a dotted lower-case verb, got {action!r}")
        if not _SUBJECT_TYPE.match(subject_type):
            raise ValueError(f"audit subject_type must be a lower-case identifier, got {subject_type!r}")
        digest = change_digest(self._digest_key, change)  # before any I/O: a bad change writes nothing
        context = structlog.contextvars.get_contextvars()
        # In the caller's transaction when there is one (the entry commits with the change it records);
        # otherwise a write of its own. ``write`` joins a current transaction, so both cases are this call.
        entry = await self._db.write(lambda: self._append(actor, action, subject_type, subject_id, digest, context))
        log.info("audit recorded", action=action, subject_type=subject_type, sequence=entry.sequence)
        return entry

    async def _append(
        self,
        actor: AuditActor,
        action: str,
        subject_type: str,
        subject_id: uuid.UUID | None,
        digest: str | None,
        context: Mapping[str, Any],
    ) -> AuditEntry:
        await self._store.lock_tail()
        sequence, previous_hash = await self._store.tail()
        entry = seal_entry(
            entry_id=uuid.uuid4(),
            sequence=sequence + 1,
            occurred_at=self._clock(),
            actor=actor,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            request_id=_context_id(context, "request_id"),
            trace_id=_context_id(context, "trace_id"),
            change_digest=digest,
            previous_hash=previous_hash,
        )
        await self._store.append(entry)
        return entry


class VerifyReport(msgspec.Struct, frozen=True):
    """Outcome of :func:`verify_chain`: entries that verified, and the first break (if any)."""

    entries: int
    segments: int
    broken: ChainBreak | None


async def verify_chain(
    store: AuditStore, batch_size: int, progress: Callable[[int], None] | None = None
) -> VerifyReport:
    """Stream the whole chain from the genesis hash, ``batch_size`` entries per query, and check it
    against the sealed segments' recorded hashes too.

    What this can and cannot see: the append-only triggers bind only roles that do not own the tables.
    On PostgreSQL the role that runs the migrations owns them and can disable or drop the triggers; if
    the app runs its own migrations (``database.auto_migrate``), the app can. The guarantee against the
    app itself needs the migrations run by a separate owner role and the app granted only INSERT and
    SELECT on ``audit_log`` and ``audit_segments``. On SQLite the app can always drop the triggers, and
    ``INSERT OR REPLACE`` replaces a row with a conflicting id or sequence without firing the DELETE
    trigger (SQLite fires delete triggers for REPLACE only with ``PRAGMA recursive_triggers``). Whoever
    can write the tables can rewrite the chain end to end (every hash recomputed) and ``audit_segments``
    with it, or delete the unsealed newest entries: this check finds neither. Only
    ``ck audit verify --against-archive``, which compares with the Object Lock copies, detects a rewrite
    of what was sealed; entries after the last sealed segment have no protection but the triggers."""
    segments = await store.segments()
    sealed = {s.last_sequence: s.last_entry_hash for s in segments}
    verifier = ChainVerifier()
    async for batch in store.stream(batch_size):
        for entry in batch:
            broken = verifier.feed(entry)
            if broken is None and entry.sequence in sealed and entry.entry_hash != sealed[entry.sequence]:
                broken = ChainBreak(entry.sequence, entry.id, "entry_hash differs from the sealed segment's last hash")
            if broken is not None:
                return VerifyReport(verifier.checked, len(segments), broken)
        if progress is not None:
            progress(len(batch))
    sealed_up_to = max(sealed, default=0)
    if sealed_up_to >= verifier.expected_sequence:
        missing = verifier.expected_sequence
        return VerifyReport(
            verifier.checked,
            len(segments),
            ChainBreak(missing, None, f"entry missing: sealed segments reach sequence {sealed_up_to}"),
        )
    return VerifyReport(verifier.checked, len(segments), None)
