"""Use case: erase a user by crypto-shredding.

Destroying the user's data key makes every value sealed with it unreadable wherever a copy lives
(replicas, exports, backups taken after the erasure). A database backup taken *before* the erasure still
holds the wrapped key: it becomes unreadable only once every KEK that ever wrapped that key is retired
(removed from settings and from wherever KEKs are kept), so retire KEKs on the backup retention schedule.
What is cheap to remove goes too: the profile row, device tokens, and unsubmitted keys are revoked.
Attempts stay (the other participant's history and the unlock state depend on them); the erased
person's fields in them read as erased (:class:`app.db.key_store.AttemptRecord`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import msgspec
import structlog

from app.adapters.cache import Cache
from app.db.device_store import DeviceStore
from app.db.engine import Database
from app.db.key_store import KeyStore
from app.db.profile_store import ProfileStore
from app.domain.audit_chain import AuditActor
from app.errors import ErrorCode, ServiceError
from app.services.create_key import quiz_cache_key
from app.services.encryption import FieldEncryption

if TYPE_CHECKING:
    from app.services.audit import AuditLog

__all__ = ["ErasureResult", "UserErasure"]

log = structlog.get_logger(__name__)


class ErasureResult(msgspec.Struct, frozen=True, rename="camel"):
    """What an erasure did. ``status`` is ``already_erased`` when an earlier call did it (idempotent)."""

    user_id: uuid.UUID
    status: Literal["erased", "already_erased"]
    revoked_keys: int = 0
    removed_devices: int = 0


class UserErasure:
    """Erases users: data key destroyed, profile and device tokens removed, open keys revoked, audited."""

    def __init__(
        self,
        db: Database,
        encryption: FieldEncryption,
        profiles: ProfileStore,
        keys: KeyStore,
        devices: DeviceStore,
        cache: Cache,
        audit: AuditLog,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._encryption = encryption
        self._profiles = profiles
        self._keys = keys
        self._devices = devices
        self._cache = cache
        self._audit = audit
        self._clock = clock

    async def erase(self, user_id: uuid.UUID, actor: AuditActor) -> ErasureResult:
        """Erase ``user_id``; NOT_FOUND when nothing of theirs was ever stored. Calling it again
        answers ``already_erased`` and changes nothing."""
        if await self._encryption.store.is_destroyed(user_id):
            return ErasureResult(user_id, "already_erased")
        known = (await self._encryption.store.get_many([user_id])) or await self._profiles.get_profile(user_id)
        devices = await self._devices.tokens_for([user_id])
        if not known and not devices:
            raise ServiceError(ErrorCode.NOT_FOUND, "No such user.")

        async def write() -> tuple[list[uuid.UUID], int]:
            await self._encryption.destroy(user_id)
            await self._profiles.delete_profile(user_id)
            revoked = await self._keys.revoke_open_keys(user_id)
            removed = await self._devices.prune([d.token for d in devices])
            await self._audit.record(
                actor=actor,
                action="user.erased",
                subject_type="user",
                subject_id=user_id,
                change={"revokedKeys": len(revoked), "removedDevices": removed},
            )
            return revoked, removed

        revoked, removed = await self._db.write(write)
        self._encryption.evict(user_id)  # again: a request may have cached the key while this ran
        for key_id in revoked:
            await self._cache.delete(quiz_cache_key(key_id))
        log.info("user erased", user_id=str(user_id), revoked_keys=len(revoked), removed_devices=removed)
        return ErasureResult(user_id, "erased", revoked_keys=len(revoked), removed_devices=removed)
