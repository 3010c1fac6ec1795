"""Per-user data keys: load (one query for every user a request touches), create, cache, destroy.

Values are sealed by :mod:`app.domain.field_crypto`; this service only finds the right keys. Unwrapped
data keys are cached in this process for ``encryption.data_key_cache_seconds`` (bounded, least recently
used first). Erasure evicts the key here at once; another instance may keep decrypting that user's
values until its cached copy expires, so the staleness window across instances is that setting.

A data-key rotation (``ck keys rotate-data``, another process) re-seals values with a key no other
instance has cached yet: readers use :meth:`FieldEncryption.keyring_covering`, which notices a value
naming a key the cached copy lacks and reloads that owner's keys from the database once.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime

import structlog

from app.db.data_keys import DataKeyRow, DataKeyStore
from app.domain.field_crypto import DataKey, Keyring, UserKeys, new_data_key
from app.services.key_encryption_keys import KeyEncryptionKeys, WrappedKey

__all__ = ["DESTROYED", "FieldEncryption", "owner_context"]

log = structlog.get_logger(__name__)
DESTROYED = UserKeys(current=None)


def owner_context(user_id: uuid.UUID) -> bytes:
    """Associated data of a wrapped data key: a wrapped key moved to another user does not unwrap."""
    return f"ck-dek|{user_id}".encode()


class _TtlCache:
    """A small LRU of unwrapped keys with a time limit (no cache library is a dependency here)."""

    def __init__(self, seconds: float, size: int) -> None:
        self._seconds = seconds
        self._size = size
        self._items: OrderedDict[uuid.UUID, tuple[float, UserKeys]] = OrderedDict()

    def get(self, user_id: uuid.UUID) -> UserKeys | None:
        found = self._items.get(user_id)
        if found is None:
            return None
        if found[0] < time.monotonic():
            del self._items[user_id]
            return None
        self._items.move_to_end(user_id)
        return found[1]

    def put(self, user_id: uuid.UUID, keys: UserKeys) -> None:
        if self._seconds <= 0:
            return
        self._items[user_id] = (time.monotonic() + self._seconds, keys)
        self._items.move_to_end(user_id)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def evict(self, user_id: uuid.UUID) -> None:
        self._items.pop(user_id, None)

    def clear(self) -> None:
        self._items.clear()


class FieldEncryption:
    """Finds, creates and destroys users' data keys; hands out :class:`Keyring` objects."""

    def __init__(
        self,
        keks: KeyEncryptionKeys,
        store: DataKeyStore,
        clock: Callable[[], datetime],
        *,
        cache_seconds: float = 60.0,
        cache_size: int = 10_000,
        read_plaintext: bool = True,
    ) -> None:
        self.keks = keks
        self.store = store
        self._clock = clock
        self._read_plaintext = read_plaintext
        self._cache = _TtlCache(cache_seconds, cache_size)

    async def unwrap(self, row: DataKeyRow) -> UserKeys:
        """The usable keys of a stored row (:data:`DESTROYED` for a tombstone)."""
        if row.wrapped_key is None or row.key_id is None or row.kek_id is None:
            return DESTROYED
        context = owner_context(row.user_id)
        current = await self.keks.unwrap(WrappedKey(row.kek_id, row.wrapped_key), row.key_id, context)
        previous: DataKey | None = None
        if row.previous_wrapped_key is not None and row.previous_key_id and row.previous_kek_id:
            previous = await self.keks.unwrap(
                WrappedKey(row.previous_kek_id, row.previous_wrapped_key), row.previous_key_id, context
            )
        return UserKeys(current, previous)

    async def keyring(self, user_ids: Collection[uuid.UUID], *, create: bool = False) -> Keyring:
        """The keys of ``user_ids`` in at most one read (two when keys are created). With ``create``, a
        user without a key gets one; an erased user's keys stay destroyed (sealing then raises
        :class:`app.domain.field_crypto.KeyDestroyedError`). Without ``create`` such users are absent."""
        keyring = Keyring(read_plaintext=self._read_plaintext)
        missing = []
        for user_id in set(user_ids):
            cached = self._cache.get(user_id)
            if cached is None:
                missing.append(user_id)
            else:
                keyring.add(user_id, cached)
        if not missing:
            return keyring
        rows = await self.store.get_many(missing)
        absent = [user_id for user_id in missing if user_id not in rows]
        if absent and create:
            await self._create(absent)
            rows.update(await self.store.get_many(absent))
        for user_id, row in rows.items():
            keys = await self.unwrap(row)
            self._cache.put(user_id, keys)
            keyring.add(user_id, keys)
        return keyring

    async def keyring_covering(self, tokens: Mapping[uuid.UUID, Iterable[str | None]]) -> Keyring:
        """:meth:`keyring` for the owners in ``tokens``, made to cover the stored values given for each:
        an owner whose values name a key that is neither their cached current nor previous key (another
        process rotated it meanwhile) is evicted and reloaded from the database, once. Readers use this so
        a rotation elsewhere never fails a read for up to the cache's lifetime. Plaintext and ``None``
        values are ignored; a value still naming an unknown key after the reload fails in
        :meth:`Keyring.open` as before (:class:`app.domain.field_crypto.UnknownKeyError`)."""
        keyring = await self.keyring(tokens.keys())
        stale = [owner for owner, values in tokens.items() if any(keyring.lacks_key_for(owner, v) for v in values)]
        if not stale:
            return keyring
        for owner in stale:
            self._cache.evict(owner)
        log.info("data keys reloaded: values name keys newer than the cached ones", users=len(stale))
        fresh = await self.keyring(stale)
        for owner in stale:
            keys = fresh.get(owner)
            if keys is not None:
                keyring.add(owner, keys)
        return keyring

    async def _create(self, user_ids: Collection[uuid.UUID]) -> None:
        new_rows = []
        for user_id in user_ids:
            key = new_data_key()
            wrapped = await self.keks.wrap(key, owner_context(user_id))
            new_rows.append((user_id, key.key_id, wrapped.kek_id, wrapped.blob))
        await self.store.insert_new(new_rows, self._clock())

    async def destroy(self, user_id: uuid.UUID) -> bool:
        """Crypto-shred ``user_id``: delete their wrapped keys (leaving a tombstone) and evict the cached
        copy. ``True`` when a live key was destroyed by this call. Run it inside the erasure transaction."""
        destroyed = await self.store.destroy(user_id, self._clock())
        self._cache.evict(user_id)
        return destroyed

    def evict(self, user_id: uuid.UUID) -> None:
        """Forget the cached keys of ``user_id`` (after a rotation or erasure changed them)."""
        self._cache.evict(user_id)

    def clear_cache(self) -> None:
        self._cache.clear()
