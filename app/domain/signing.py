"""HMAC-SHA256 signed quiz payloads: ``v1.<kid>.<claims>.<signature>`` (base64url, no padding).

The claims bind the payload to one connection key, requester, target and question set; the signature
covers the version, key id and claims so a payload cannot be moved to another key id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec
from msgspec import Struct

__all__ = ["PayloadClaims", "PayloadError", "PayloadExpired", "PayloadInvalid", "PayloadKeyRetired", "PayloadSigner"]

_VERSION = "v1"
_MAX_PAYLOAD_CHARS = 8192


class PayloadError(ValueError):
    """Base for payloads that must be refused."""


class PayloadInvalid(PayloadError):
    """Malformed, tampered, or signed with an unknown key."""


class PayloadKeyRetired(PayloadInvalid):
    """Authentic, but signed with a key retired since: a leaked or rotated-out key proves nothing."""


class PayloadExpired(PayloadError):
    """Authentic but past its expiry."""


class PayloadClaims(Struct, frozen=True, forbid_unknown_fields=True):
    """What a signed payload asserts. Times are UTC epoch seconds."""

    key_id: uuid.UUID
    conversation_id: uuid.UUID
    requester_id: uuid.UUID
    target_id: uuid.UUID
    question_ids: list[uuid.UUID]
    issued_at: int
    expires_at: int

    @property
    def expires_at_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.expires_at, tz=UTC)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _b64decode(text: str) -> bytes:
    if not _BASE64URL.fullmatch(text):
        raise PayloadInvalid("payload is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise PayloadInvalid("payload is not base64url") from exc


class PayloadSigner:
    """Signs with the active key; verifies with any configured key not yet retired (so keys rotate without
    downtime, and a leaked key can be revoked at once)."""

    def __init__(
        self,
        keys: Mapping[str, str],
        active_key_id: str,
        ttl_seconds: int,
        retired: Mapping[str, datetime] | None = None,
    ) -> None:
        """``retired`` maps key ids to the (aware) moment from which they no longer verify anything."""
        if active_key_id not in keys:
            raise ValueError("active key id is not among the keys")
        retired = dict(retired or {})
        if active_key_id in retired:
            raise ValueError("the active key cannot be retired")
        if any(when.tzinfo is None for when in retired.values()):
            raise ValueError("retirement times must be timezone-aware")
        self._retired = retired
        self._keys = {kid: secret.encode() for kid, secret in keys.items()}
        self.active_key_id = active_key_id
        self.ttl_seconds = ttl_seconds
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(PayloadClaims)

    def _mac(self, kid: str, signed_part: str) -> bytes:
        return hmac.new(self._keys[kid], signed_part.encode("ascii"), hashlib.sha256).digest()

    def claims_for(
        self,
        *,
        key_id: uuid.UUID,
        conversation_id: uuid.UUID,
        requester_id: uuid.UUID,
        target_id: uuid.UUID,
        question_ids: list[uuid.UUID],
        now: datetime,
    ) -> PayloadClaims:
        """Claims for a payload issued at ``now`` and expiring ``ttl_seconds`` later."""
        issued = int(now.timestamp())
        return PayloadClaims(
            key_id=key_id,
            conversation_id=conversation_id,
            requester_id=requester_id,
            target_id=target_id,
            question_ids=question_ids,
            issued_at=issued,
            expires_at=issued + self.ttl_seconds,
        )

    def sign(self, claims: PayloadClaims) -> str:
        """Serialise and sign ``claims`` with the active key."""
        body = _b64encode(self._encoder.encode(claims))
        signed_part = f"{_VERSION}.{self.active_key_id}.{body}"
        return f"{signed_part}.{_b64encode(self._mac(self.active_key_id, signed_part))}"

    def request_digest(self, payload: str, request: bytes) -> str:
        """HMAC-SHA256 (hex) of a submission: ``request`` (the submitter and canonical answers, see
        :func:`app.domain.contract.canonical_submission`) under ``payload``, keyed by the secret of the key
        that signed ``payload`` (stable for the payload's whole life, across rotations of the active key).
        Stored on the attempt so an identical resubmission can be recognised without keeping the answers
        in clear. ``payload`` must have been verified."""
        kid = payload.split(".")[1]
        mac = hmac.new(self._keys[kid], b"ck-submission-v1\x00", hashlib.sha256)
        mac.update(payload.encode("ascii"))
        mac.update(b"\x00")
        mac.update(request)
        return mac.hexdigest()

    def verify(self, payload: str, now: datetime) -> PayloadClaims:
        """Return the claims of an authentic, unexpired payload.

        Raises :class:`PayloadInvalid` for anything malformed, tampered or signed with an unknown key
        (:class:`PayloadKeyRetired` for a key retired by ``now``), and :class:`PayloadExpired` for an
        authentic payload past its expiry. The signature is checked (in constant time) before the claims
        are parsed, so unauthenticated bytes never reach the decoder.
        """
        if not isinstance(payload, str) or len(payload) > _MAX_PAYLOAD_CHARS:
            raise PayloadInvalid("payload has the wrong size")
        if not payload.isascii():  # every valid payload is; the MAC input is encoded as ASCII below
            raise PayloadInvalid("payload has the wrong format")
        parts = payload.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            raise PayloadInvalid("payload has the wrong format")
        _, kid, body, signature = parts
        if kid not in self._keys:
            raise PayloadInvalid("payload was signed with an unknown key")
        # Compare canonical encodings, not decoded bytes: base64 leaves spare bits in the last
        # character, and a lenient decode would accept several spellings of one signature.
        expected = _b64encode(self._mac(kid, f"{_VERSION}.{kid}.{body}"))
        if not hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace")):
            raise PayloadInvalid("payload signature does not match")
        retired_at = self._retired.get(kid)
        if retired_at is not None and now >= retired_at:
            raise PayloadKeyRetired("payload was signed with a retired key")
        try:
            claims = self._decoder.decode(_b64decode(body))
        except msgspec.DecodeError as exc:
            raise PayloadInvalid("payload claims are malformed") from exc
        if now.timestamp() >= claims.expires_at:
            raise PayloadExpired("payload has expired")
        return claims
