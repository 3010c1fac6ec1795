"""Key rotation in batches, safe while the service runs, resumable after any interruption.

* :meth:`KeyRotation.rewrap`: every data key not yet wrapped by the active KEK is re-wrapped under it
  (values are untouched). Progress is the data itself: a rerun picks up only keys still under an old
  KEK, so once ``ck keys status`` shows none, the old KEK can be removed from settings.
* :meth:`KeyRotation.seal_legacy`: rows written before field encryption existed are sealed with their
  owner's data key (an erased owner's leftovers are sealed under a key that is thrown away at once).
* :meth:`KeyRotation.rotate_data`: users whose data key was made before a cutoff get a fresh one and
  every value of theirs is re-sealed, one user per transaction. The old key stays as ``previous`` so a
  request that sealed with a cached copy meanwhile is still readable; the next rotation re-seals it.
  Readers are affected too: other instances keep the old key cached (current = old) for up to
  ``encryption.data_key_cache_seconds`` while the values now name the fresh key; their read paths use
  :meth:`app.services.encryption.FieldEncryption.keyring_covering`, which reloads such an owner's keys.
  Only this process's cache is evicted here.

Every row update is conditional on the value read (compare-and-set): a concurrent write wins and is left
alone, since it was sealed with a key the user still holds.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from piccolo.table import Table

from app.db.data_keys import DataKeyRow
from app.db.engine import Database
from app.db.key_store import ATTEMPT_TABLE, QUESTION_SEALED_COLUMNS, QUESTION_TABLE, breakdown_feedback_ref
from app.db.moderation_store import DECISION_TABLE
from app.db.profile_store import PROFILE_SEALED_COLUMNS
from app.db.tables import ConnectionKey, ConnectionKeyAttempt, ConnectionKeyQuestion, ModerationDecision, Profile
from app.domain.audit_chain import AuditActor
from app.domain.field_crypto import FORMAT_VERSION, FieldRef, Keyring, UserKeys, is_ciphertext, new_data_key
from app.services.encryption import FieldEncryption, owner_context

if TYPE_CHECKING:
    from app.services.audit import AuditLog

__all__ = ["KeyRotation", "RotationReport", "legacy_plaintext_left"]

log = structlog.get_logger(__name__)
_lines = msgspec.json.Decoder(list[dict[str, Any]])
_json = msgspec.json.Encoder()
_LEGACY = f"{FORMAT_VERSION}.%"
Progress = Callable[[int], None]


class RotationReport(msgspec.Struct, frozen=True):
    """What one run did: ``phase`` (``rewrap``, ``legacy``, ``data``), items done and batches committed."""

    phase: str
    done: int
    batches: int
    complete: bool


def _convert(owner: uuid.UUID, ref: FieldRef, stored: str | None, opener: Keyring, sealer: Keyring) -> str | None:
    if stored is None:
        return None
    if opener.is_destroyed(owner):
        # Erased owner: sealed values are unreadable already; leftover plaintext is shredded the same way.
        return stored if is_ciphertext(stored) else sealer.seal(owner, ref, stored)
    return sealer.reseal(owner, ref, stored, opener)


def _convert_lines(
    owner: uuid.UUID, attempt_id: uuid.UUID, column: str, stored: Any, opener: Keyring, sealer: Keyring
) -> str:
    lines = _lines.decode(stored if isinstance(stored, str) else _json.encode(stored))
    for index, line in enumerate(lines):
        if line.get("feedback") is not None:
            ref = breakdown_feedback_ref(attempt_id, column, index, line)
            line["feedback"] = _convert(owner, ref, line["feedback"], opener, sealer)
    return _json.encode(lines).decode()


async def _update_if_unchanged(
    table: type[Table], key: str, row: dict[str, Any], guard: str, values: dict[str, Any]
) -> None:
    pk = table._meta.get_column_by_name(key)
    guard_column = table._meta.get_column_by_name(guard)
    changes = {table._meta.get_column_by_name(name): value for name, value in values.items()}
    await table.update(changes).where((pk == row[key]) & (guard_column == row[guard])).run()


async def _reseal_user(user_id: uuid.UUID, opener: Keyring, sealer: Keyring) -> int:
    """Re-seal every stored value ``user_id`` owns from ``opener``'s keys to ``sealer``'s; rows touched."""
    touched = 0
    for row in await Profile.select().where(Profile.user_id == user_id).run():
        values = {
            c: _convert(user_id, FieldRef("profiles", c, user_id), row[c], opener, sealer)
            for c in PROFILE_SEALED_COLUMNS
        }
        await _update_if_unchanged(Profile, "user_id", row, "display_name", values)
        touched += 1
    their_keys = ConnectionKey.select(ConnectionKey.id).where(ConnectionKey.target_id == user_id)
    for row in (
        await ConnectionKeyQuestion.select().where(ConnectionKeyQuestion.connection_key_id.is_in(their_keys)).run()
    ):
        values = {
            c: _convert(user_id, FieldRef(QUESTION_TABLE, c, row["id"]), row[c], opener, sealer)
            for c in QUESTION_SEALED_COLUMNS
        }
        await _update_if_unchanged(ConnectionKeyQuestion, "id", row, "prompt", values)
        touched += 1
    a = ConnectionKeyAttempt
    for row in (
        await a.select(a.id, a.responses, a.breakdown, a.shadow_breakdown).where(a.requester_id == user_id).run()
    ):
        values = {
            "responses": _convert(
                user_id, FieldRef(ATTEMPT_TABLE, "responses", row["id"]), row["responses"], opener, sealer
            ),
            **{
                c: _convert_lines(user_id, row["id"], c, row[c], opener, sealer)
                for c in ("breakdown", "shadow_breakdown")
            },
        }
        await _update_if_unchanged(a, "id", row, "responses", values)
        touched += 1
    for row in await a.select(a.id, a.feedback).where(a.target_id == user_id).run():
        feedback = _convert(user_id, FieldRef(ATTEMPT_TABLE, "feedback", row["id"]), row["feedback"], opener, sealer)
        await _update_if_unchanged(a, "id", row, "feedback", {"feedback": feedback})
        touched += 1
    d = ModerationDecision  # moderators' reasons about the user's attempts: sealed with the requester's key
    their_attempts = a.select(a.id).where(a.requester_id == user_id)
    for row in await d.select(d.id, d.reason).where(d.attempt_id.is_in(their_attempts)).run():
        reason = _convert(user_id, FieldRef(DECISION_TABLE, "reason", row["id"]), row["reason"], opener, sealer)
        await _update_if_unchanged(d, "id", row, "reason", {"reason": reason})
        touched += 1
    return touched


async def legacy_plaintext_left() -> bool:
    """Whether a probe finds plaintext written before field encryption (``ck keys rotate`` seals it).

    It probes one sealed column per table (``profiles.display_name``, ``connection_key_questions.prompt``,
    ``connection_key_attempts.responses`` and ``.feedback``, ``moderation_decisions.reason``), the column
    every writer and the rotation seal together with the rest of the row; other columns (and breakdown
    feedback) are not scanned, so ``False`` means "none found in the probed columns", not a proof. While it
    is ``True``, ``encryption.legacy_plaintext`` must stay ``read``."""
    return bool(await _legacy_owners(1))


async def _legacy_owners(limit: int) -> list[uuid.UUID]:
    """Owners of values still in plaintext (at most ``limit``, found with ``NOT LIKE 'ck1.%'``)."""
    owners: list[uuid.UUID] = []
    queries = [
        (Profile.select(Profile.user_id).where(Profile.display_name.not_like(_LEGACY)), "user_id"),
        (
            ConnectionKey.select(ConnectionKey.target_id).where(
                ConnectionKey.id.is_in(
                    ConnectionKeyQuestion.select(ConnectionKeyQuestion.connection_key_id).where(
                        ConnectionKeyQuestion.prompt.not_like(_LEGACY)
                    )
                )
            ),
            "target_id",
        ),
        (
            ConnectionKeyAttempt.select(ConnectionKeyAttempt.requester_id).where(
                ConnectionKeyAttempt.responses.not_like(_LEGACY)
            ),
            "requester_id",
        ),
        (
            ConnectionKeyAttempt.select(ConnectionKeyAttempt.target_id).where(
                ConnectionKeyAttempt.feedback.not_like(_LEGACY)
            ),
            "target_id",
        ),
        (
            ConnectionKeyAttempt.select(ConnectionKeyAttempt.requester_id).where(
                ConnectionKeyAttempt.id.is_in(
                    ModerationDecision.select(ModerationDecision.attempt_id).where(
                        ModerationDecision.reason.not_like(_LEGACY)
                    )
                )
            ),
            "requester_id",
        ),
    ]
    for query, column in queries:
        for row in await query.distinct().limit(limit).run():
            owner = uuid.UUID(str(row[column]))
            if owner not in owners:
                owners.append(owner)
        if len(owners) >= limit:
            break
    return owners[:limit]


class KeyRotation:
    """The three resumable batch jobs behind ``litestar ck keys ...``; each run is audited."""

    def __init__(
        self, db: Database, encryption: FieldEncryption, audit: AuditLog, clock: Callable[[], datetime]
    ) -> None:
        self._db = db
        self._encryption = encryption
        self._audit = audit
        self._clock = clock

    async def _audited(self, report: RotationReport, **extra: Any) -> RotationReport:
        await self._audit.record(
            actor=AuditActor.system(),
            action="encryption.rotated",
            subject_type="encryption",
            subject_id=None,
            change={"phase": report.phase, "done": report.done, "complete": report.complete, **extra},
        )
        log.info("encryption rotation run", phase=report.phase, done=report.done, complete=report.complete)
        return report

    async def rewrap(
        self, batch_size: int, progress: Progress | None = None, max_batches: int | None = None
    ) -> RotationReport:
        """Re-wrap data keys under the active KEK, ``batch_size`` per transaction."""
        keks, store = self._encryption.keks, self._encryption.store
        done = batches = 0
        complete = False
        while max_batches is None or batches < max_batches:
            rows = await store.not_wrapped_by(keks.active_key_id, batch_size)
            if not rows:
                complete = True
                break
            done += await self._db.write(functools.partial(self._rewrap_batch, rows))
            batches += 1
            if progress:
                progress(len(rows))
        if not complete:
            complete = not await store.not_wrapped_by(keks.active_key_id, 1)
        return await self._audited(RotationReport("rewrap", done, batches, complete), kek=keks.active_key_id)

    async def _rewrap_batch(self, rows: list[DataKeyRow]) -> int:
        """One batch of :meth:`rewrap`, in one write transaction; returns the rows re-wrapped."""
        keks, store = self._encryption.keks, self._encryption.store
        rewrapped = 0
        for row in rows:
            keys = await self._encryption.unwrap(row)  # UnknownKekError names a KEK removed too early
            assert keys.current is not None
            context = owner_context(row.user_id)
            current = await keks.wrap(keys.current, context)
            previous = await keks.wrap(keys.previous, context) if keys.previous is not None else None
            if await store.rewrap(row, current.kek_id, current.blob, previous.blob if previous else None):
                rewrapped += 1
        return rewrapped

    async def seal_legacy(
        self, batch_size: int, progress: Progress | None = None, max_batches: int | None = None
    ) -> RotationReport:
        """Seal plaintext left from before field encryption, ``batch_size`` owners per batch."""
        done = batches = 0
        complete = False
        while max_batches is None or batches < max_batches:
            owners = await _legacy_owners(batch_size)
            if not owners:
                complete = True
                break
            keyring = await self._encryption.keyring(owners, create=True)  # keys committed before the batch
            for owner in owners:
                sealer = keyring
                if keyring.is_destroyed(owner):
                    sealer = Keyring({owner: UserKeys(new_data_key())})  # thrown away: shreds the leftovers
                await self._db.write(functools.partial(_reseal_user, owner, keyring, sealer))
                done += 1
            batches += 1
            if progress:
                progress(len(owners))
        if not complete:
            complete = not await _legacy_owners(1)
        return await self._audited(RotationReport("legacy", done, batches, complete))

    async def _replace_key(
        self, replace: Callable[[datetime], Awaitable[bool]], reseal: Callable[[], Awaitable[int]]
    ) -> int:
        """One user of :meth:`rotate_data`, in one write transaction: 1 when the key row was replaced."""
        if not await replace(self._clock()):
            return 0
        await reseal()
        return 1

    async def rotate_data(
        self, before: datetime, batch_size: int, progress: Progress | None = None, max_batches: int | None = None
    ) -> RotationReport:
        """Give every user whose data key was made before ``before`` a new one and re-seal their values
        (one transaction per user). Rerun with the same ``before`` to resume."""
        keks, store = self._encryption.keks, self._encryption.store
        done = batches = 0
        complete = False
        while max_batches is None or batches < max_batches:
            rows = await store.created_before(before, batch_size)
            if not rows:
                complete = True
                break
            for row in rows:
                old = await self._encryption.unwrap(row)
                assert old.current is not None
                fresh = new_data_key()
                wrapped = await keks.wrap(fresh, owner_context(row.user_id))
                opener = Keyring({row.user_id: old})
                sealer = Keyring({row.user_id: UserKeys(fresh, old.current)})
                # The key row first: if another run or an erasure changed it, this user is skipped.
                replace = functools.partial(store.replace, row, fresh.key_id, wrapped.kek_id, wrapped.blob)
                reseal = functools.partial(_reseal_user, row.user_id, opener, sealer)
                done += await self._db.write(functools.partial(self._replace_key, replace, reseal))
                self._encryption.evict(row.user_id)
            batches += 1
            if progress:
                progress(len(rows))
        if not complete:
            complete = not await store.created_before(before, 1)
        return await self._audited(RotationReport("data", done, batches, complete), before=before.isoformat())
