"""Per-field authenticated encryption (AES-256-GCM) and key wrapping. Pure: no I/O, no clock.

A stored value is ``ck1.<key id>.<base64url(nonce | ciphertext | tag)>``: self-describing, so a
reader knows which data key sealed it and a rotation can find values still under an old key.

The associated data binds each value to its place (format version, table, column, record id, key
id): a ciphertext copied to another row, another column or relabelled with another key id fails
authentication instead of decrypting somewhere it does not belong.

Each user has their own data key (DEK). :class:`Keyring` holds the DEKs of the users a request
touches, so adapters seal and open values without a database round trip per field.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from msgspec import Struct

__all__ = [
    "FORMAT_VERSION",
    "KEY_BYTES",
    "DataKey",
    "DecryptionError",
    "FieldCryptoError",
    "FieldRef",
    "KeyDestroyedError",
    "Keyring",
    "MalformedCiphertextError",
    "UnknownKeyError",
    "UserKeys",
    "decrypt_value",
    "encrypt_value",
    "is_ciphertext",
    "new_data_key",
    "token_key_id",
    "unwrap_key",
    "wrap_key",
]

FORMAT_VERSION = "ck1"
KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12  # 96-bit random nonce: the GCM recommendation; 2^32 values per key stay far below collision risk
_TAG_BYTES = 16
_KEY_ID = r"[A-Za-z0-9_-]{1,64}"
_TOKEN = re.compile(rf"{FORMAT_VERSION}\.({_KEY_ID})\.([A-Za-z0-9_-]+)")
_KEY_ID_PATTERN = re.compile(_KEY_ID)


class FieldCryptoError(Exception):
    """Base of every failure of this module. Messages never contain plaintext or key material."""


class DecryptionError(FieldCryptoError):
    """The value does not authenticate: tampered, truncated, moved to another place or sealed with another key."""


class MalformedCiphertextError(DecryptionError):
    """The value is not in the ``ck1.<key id>.<base64url>`` format (or is too short to hold a tag)."""


class UnknownKeyError(DecryptionError):
    """The value names a data key this keyring does not hold (neither the user's current nor previous key)."""


class KeyDestroyedError(FieldCryptoError):
    """The owner's data key was destroyed (crypto-shredding): the value can never be read again."""


class FieldRef(Struct, frozen=True):
    """Where a value lives; it becomes the associated data of its ciphertext."""

    table: str
    column: str
    record_id: uuid.UUID

    def associated_data(self, key_id: str) -> bytes:
        return f"{FORMAT_VERSION}|{self.table}|{self.column}|{self.record_id}|{key_id}".encode()


@dataclass(frozen=True, slots=True)
class DataKey:
    """A data key: its id (stored in every token it seals) and its 32 secret bytes (kept out of ``repr``)."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KEY_ID_PATTERN.fullmatch(self.key_id):
            raise ValueError("data key id must be 1-64 characters of [A-Za-z0-9_-]")
        if len(self.secret) != KEY_BYTES:
            raise ValueError("data key must be 32 bytes")


def new_data_key() -> DataKey:
    """A fresh random data key with a random id."""
    return DataKey(uuid.uuid4().hex, AESGCM.generate_key(bit_length=256))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedCiphertextError("ciphertext is not base64url") from exc


def is_ciphertext(value: object) -> bool:
    """Whether ``value`` has the token format (values without it are legacy plaintext from before encryption)."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def token_key_id(token: str) -> str:
    """The id of the data key that sealed ``token``."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise MalformedCiphertextError("value is not a ck1 ciphertext")
    return match.group(1)


def encrypt_value(key: DataKey, plaintext: str, ref: FieldRef) -> str:
    """Seal ``plaintext`` for the place ``ref`` with ``key``."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(key.secret).encrypt(nonce, plaintext.encode("utf-8"), ref.associated_data(key.key_id))
    return f"{FORMAT_VERSION}.{key.key_id}.{_b64(nonce + sealed)}"


def decrypt_value(key: DataKey, token: str, ref: FieldRef) -> str:
    """Open a token sealed by :func:`encrypt_value` for the same ``ref`` and ``key``.

    Raises :class:`MalformedCiphertextError`, :class:`UnknownKeyError` (the token names another key)
    or :class:`DecryptionError` (authentication failed).
    """
    if token_key_id(token) != key.key_id:
        raise UnknownKeyError("value was sealed with another data key")
    raw = _unb64(token.rsplit(".", 1)[1])
    if len(raw) < _NONCE_BYTES + _TAG_BYTES:
        raise MalformedCiphertextError("ciphertext is truncated")
    try:
        plain = AESGCM(key.secret).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], ref.associated_data(key.key_id))
    except InvalidTag:
        raise DecryptionError("value does not authenticate for this place and key") from None
    return plain.decode("utf-8")


def wrap_key(kek: bytes, data_key: DataKey, context: bytes) -> bytes:
    """Encrypt a data key under a key-encryption key; ``context`` (e.g. the owner's id) is bound as
    associated data so a wrapped key cannot be moved to another user."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, data_key.secret, context + b"|" + data_key.key_id.encode())


def unwrap_key(kek: bytes, key_id: str, wrapped: bytes, context: bytes) -> DataKey:
    """Inverse of :func:`wrap_key`; :class:`DecryptionError` when it does not authenticate."""
    if len(wrapped) < _NONCE_BYTES + _TAG_BYTES:
        raise MalformedCiphertextError("wrapped key is truncated")
    try:
        secret = AESGCM(kek).decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], context + b"|" + key_id.encode())
    except InvalidTag:
        raise DecryptionError("wrapped key does not authenticate") from None
    return DataKey(key_id, secret)


@dataclass(frozen=True, slots=True)
class UserKeys:
    """One user's data keys: ``current`` seals new values; ``previous`` (one rotation back) still opens
    values a concurrent writer sealed just before a rotation. Both ``None``: destroyed (erased user)."""

    current: DataKey | None
    previous: DataKey | None = None

    @property
    def destroyed(self) -> bool:
        return self.current is None


class Keyring:
    """The data keys of the users one operation touches, by user id."""

    def __init__(self, keys: Mapping[uuid.UUID, UserKeys] | None = None, *, read_plaintext: bool = True) -> None:
        self._keys: dict[uuid.UUID, UserKeys] = dict(keys or {})
        self._read_plaintext = read_plaintext

    def add(self, user_id: uuid.UUID, keys: UserKeys) -> None:
        self._keys[user_id] = keys

    def users(self) -> Iterable[uuid.UUID]:
        return self._keys.keys()

    def get(self, user_id: uuid.UUID) -> UserKeys | None:
        return self._keys.get(user_id)

    def _keys_of(self, user_id: uuid.UUID) -> UserKeys:
        keys = self._keys.get(user_id)
        if keys is None:
            raise UnknownKeyError("no data key was loaded for the owner")
        if keys.destroyed:
            raise KeyDestroyedError("the owner's data key was destroyed")
        return keys

    def is_destroyed(self, user_id: uuid.UUID) -> bool:
        keys = self._keys.get(user_id)
        return keys is not None and keys.destroyed

    def seal(self, owner: uuid.UUID, ref: FieldRef, plaintext: str) -> str:
        """Encrypt with the owner's current key (:class:`KeyDestroyedError` when they were erased)."""
        current = self._keys_of(owner).current
        assert current is not None
        return encrypt_value(current, plaintext, ref)

    def seal_optional(self, owner: uuid.UUID, ref: FieldRef, plaintext: str | None) -> str | None:
        return None if plaintext is None else self.seal(owner, ref, plaintext)

    def open(self, owner: uuid.UUID, ref: FieldRef, stored: str) -> str:
        """Decrypt a stored value. Legacy plaintext (stored before encryption, not yet converted by
        ``litestar ck keys rotate``) is returned as it is, unless this keyring refuses plaintext: then it
        is a :class:`DecryptionError`, since a sealed column holding plaintext means someone wrote it there."""
        if not is_ciphertext(stored):
            if not self._read_plaintext:
                raise DecryptionError("plaintext found where a sealed value is required")
            return stored
        keys = self._keys_of(owner)
        key_id = token_key_id(stored)
        for key in (keys.current, keys.previous):
            if key is not None and key.key_id == key_id:
                return decrypt_value(key, stored, ref)
        raise UnknownKeyError("value names a data key this owner does not hold")

    def reseal(self, owner: uuid.UUID, ref: FieldRef, value: str, opener: Keyring | None = None) -> str:
        """Seal ``value`` with the owner's current key: a writer's (or a rotation's) plaintext as it is, a
        value sealed earlier after opening it with ``opener`` (default this keyring). Plaintext is
        expected input here, whatever this keyring's read policy."""
        plaintext = (opener or self).open(owner, ref, value) if is_ciphertext(value) else value
        return self.seal(owner, ref, plaintext)

    def open_optional(self, owner: uuid.UUID, ref: FieldRef, stored: str | None) -> str | None:
        return None if stored is None else self.open(owner, ref, stored)

    def seal_columns(
        self, owner: uuid.UUID, table: str, record_id: uuid.UUID, values: Mapping[str, str | None]
    ) -> dict[str, str | None]:
        """Seal several columns of one row (``None`` stays ``None``)."""
        return {col: self.seal_optional(owner, FieldRef(table, col, record_id), v) for col, v in values.items()}

    def open_columns(
        self, owner: uuid.UUID, table: str, record_id: uuid.UUID, values: Mapping[str, str | None]
    ) -> dict[str, str | None]:
        """Open several columns of one row (``None`` stays ``None``)."""
        return {col: self.open_optional(owner, FieldRef(table, col, record_id), v) for col, v in values.items()}

    def lacks_key_for(self, owner: uuid.UUID, stored: str | None) -> bool:
        """Whether ``stored`` is a token naming a key id that the owner's loaded keys (current or previous)
        do not include: the keys held are stale (rotated by another process) or the value was moved.
        ``False`` for ``None``, plaintext, an owner not loaded and a destroyed owner (nothing to refresh)."""
        if stored is None or not is_ciphertext(stored):
            return False
        keys = self._keys.get(owner)
        if keys is None or keys.destroyed:
            return False
        key_id = token_key_id(stored)
        return all(key is None or key.key_id != key_id for key in (keys.current, keys.previous))

    def needs_resealing(self, owner: uuid.UUID, stored: str | None) -> bool:
        """Whether ``stored`` is legacy plaintext or sealed with a key other than the owner's current one."""
        if stored is None:
            return False
        if not is_ciphertext(stored):
            return True
        keys = self._keys.get(owner)
        return keys is not None and keys.current is not None and token_key_id(stored) != keys.current.key_id
