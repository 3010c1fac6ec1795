"""Key-encryption keys (KEKs): the top of the envelope. They wrap each user's data key and never leave
this module's objects.

:class:`KeyEncryptionKeys` is the seam: :class:`LocalKeyEncryptionKeys` holds the KEKs from settings
(``[encryption] keys`` / ``key_file`` / ``CK_ENCRYPTION__KEYS``). A KMS implementation plugs in behind
the same three members, for example with AWS KMS through boto3 (run the blocking calls in a thread)::

    class AwsKmsKeyEncryptionKeys:
        active_key_id = "alias/connection-key"          # a KMS key id, ARN or alias
        def knows(self, kek_id): return True            # KMS decides; unknown ids fail in unwrap
        async def wrap(self, data_key, context):
            out = kms.encrypt(KeyId=self.active_key_id, Plaintext=data_key.secret,
                              EncryptionContext={"ck": context.decode(), "dek": data_key.key_id})
            return WrappedKey(self.active_key_id, out["CiphertextBlob"])
        async def unwrap(self, wrapped, key_id, context):
            out = kms.decrypt(KeyId=wrapped.kek_id, CiphertextBlob=wrapped.blob,
                              EncryptionContext={"ck": context.decode(), "dek": key_id})
            return DataKey(key_id, out["Plaintext"])

The KMS encryption context plays the part of the associated data here (binding a wrapped key to its
owner), and KMS-side key rotation or a new alias target is picked up by ``litestar ck keys rotate``.
"""

from __future__ import annotations

import base64
import binascii
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from msgspec import Struct

from app.domain.field_crypto import KEY_BYTES, DataKey, DecryptionError, unwrap_key, wrap_key

__all__ = [
    "KeyEncryptionKeys",
    "KeyMaterialError",
    "LocalKeyEncryptionKeys",
    "UnknownKekError",
    "WrappedKey",
    "load_kek_material",
]


class KeyMaterialError(ValueError):
    """A KEK in settings or the key file is missing or malformed (the message names it, never its value)."""


class UnknownKekError(DecryptionError):
    """A data key is wrapped by a KEK that is no longer configured: restore that KEK, or the data is lost."""


class WrappedKey(Struct, frozen=True):
    """A data key as stored: the KEK that wrapped it and the wrapped bytes."""

    kek_id: str
    blob: bytes


@runtime_checkable
class KeyEncryptionKeys(Protocol):
    """Wraps and unwraps data keys. ``context`` (the owner's id) is authenticated with the wrapped key."""

    @property
    def active_key_id(self) -> str: ...

    def knows(self, kek_id: str) -> bool: ...

    async def wrap(self, data_key: DataKey, context: bytes) -> WrappedKey: ...

    async def unwrap(self, wrapped: WrappedKey, key_id: str, context: bytes) -> DataKey: ...


def _decode_secret(kek_id: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise KeyMaterialError(f"key `{kek_id}` must be a base64 string")
    try:
        secret = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyMaterialError(f"key `{kek_id}` is not valid base64") from None
    if len(secret) != KEY_BYTES:
        raise KeyMaterialError(f"key `{kek_id}` must decode to {KEY_BYTES} bytes (got {len(secret)})")
    return secret


def _read_key_file(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyMaterialError(f"key_file {path} cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError):
        raise KeyMaterialError(f"key_file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}") from None
    if not isinstance(data, dict):
        raise KeyMaterialError(f"key_file {path} must hold a table of key id -> base64 key")
    return data


def load_kek_material(settings: Any) -> dict[str, bytes]:
    """KEK id -> 32 secret bytes from ``settings.keys`` and ``settings.key_file`` (the file wins)."""
    raw: dict[str, Any] = dict(settings.keys)
    if settings.key_file:
        raw.update(_read_key_file(Path(settings.key_file)))
    material = {kek_id: _decode_secret(kek_id, value) for kek_id, value in raw.items()}
    if not material:
        raise KeyMaterialError("no key-encryption keys configured")
    return material


class LocalKeyEncryptionKeys:
    """KEKs held in this process (from settings); wrapping is AES-256-GCM with the owner as associated data."""

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        if active_key_id not in keys:
            raise KeyMaterialError(f"active key `{active_key_id}` is not configured")
        self._keys = dict(keys)
        self._active = active_key_id

    @classmethod
    def from_settings(cls, settings: Any) -> LocalKeyEncryptionKeys:
        return cls(load_kek_material(settings), settings.active_key_id)

    @property
    def active_key_id(self) -> str:
        return self._active

    def knows(self, kek_id: str) -> bool:
        return kek_id in self._keys

    async def wrap(self, data_key: DataKey, context: bytes) -> WrappedKey:
        return WrappedKey(self._active, wrap_key(self._keys[self._active], data_key, context))

    async def unwrap(self, wrapped: WrappedKey, key_id: str, context: bytes) -> DataKey:
        kek = self._keys.get(wrapped.kek_id)
        if kek is None:
            raise UnknownKekError(f"data key is wrapped by KEK `{wrapped.kek_id}`, which is not configured")
        return unwrap_key(kek, key_id, wrapped.blob, context)

    def __repr__(self) -> str:
        return f"LocalKeyEncryptionKeys(active={self._active!r}, keys={sorted(self._keys)!r})"
