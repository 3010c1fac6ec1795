"""Supabase JWT verification shared by the GraphQL and REST edges.

RFC 8725 minded: the accepted algorithms come from settings, the token header never chooses the
kind of key (HS256 only ever meets the project secret, ES256/RS256 only JWKS keys of the matching
family), and every failure is one UNAUTHENTICATED error carrying a short machine ``reason``.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import jwt
import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from app.errors import ErrorCode, ServiceError
from app.settings import AuthSettings, ModerationSettings

__all__ = ["JwtVerifier", "Principal", "mint_token", "require_moderator", "roles_at"]

log = structlog.get_logger(__name__)

_SUPPORTED_ALGORITHMS = frozenset({"HS256", "ES256", "RS256"})
_KEY_FAMILY = {"ES256": "EC", "RS256": "RSA"}
_JWK_PARSERS = {"RSA": RSAAlgorithm.from_jwk, "EC": ECAlgorithm.from_jwk}
_MAX_TOKEN_CHARS = 16 * 1024  # far above any real Supabase token; bounds work spent on junk
_MAX_JWKS_BYTES = 1024 * 1024
_JWKS_TIMEOUT_SECONDS = 5.0
_REFETCH_MIN_INTERVAL_SECONDS = 30.0  # an attacker inventing kids must not turn us into a JWKS hammer
# Verified tokens are remembered briefly: a client sends the same token with every request, and
# signature checks are a measurable share of a request. Short, so a key withdrawn from the JWKS
# stops working within a minute; bounded, so junk cannot grow it.
_VERIFIED_CACHE_SECONDS = 60.0
_VERIFIED_CACHE_SIZE = 10_000

# Most specific first: InvalidSignatureError is a DecodeError, everything is a PyJWTError.
_PYJWT_FAILURES: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "Token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "Token is not yet valid"),
    (jwt.InvalidAudienceError, "bad_audience", "Token audience is not accepted"),
    (jwt.InvalidIssuerError, "bad_issuer", "Token issuer is not accepted"),
    (jwt.MissingRequiredClaimError, "missing_claim", "Token is missing a required claim"),
    (jwt.InvalidSignatureError, "bad_signature", "Token signature is invalid"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed", "Token signing algorithm is not allowed"),
    (jwt.PyJWTError, "malformed", "Token is malformed"),
)


class Principal(msgspec.Struct, frozen=True):
    """The caller proven by a verified token."""

    user_id: uuid.UUID
    role: str
    is_service_role: bool
    scopes: frozenset[str]
    expires_at: datetime.datetime
    roles: frozenset[str] = frozenset()
    """Roles read from the configured roles claim (``[moderation] roles_claim``); also in ``scopes``."""
    is_moderator: bool = False
    """The roles claim holds ``[moderation] moderator_role``. Never granted by ``scope``/``role`` claims."""

    def has_role(self, role: str) -> bool:
        """Whether the token's roles claim lists ``role``."""
        return role in self.roles


def require_moderator(principal: Principal) -> Principal:
    """The principal when it is a moderator; ``ServiceError(FORBIDDEN)`` otherwise."""
    if not principal.is_moderator:
        raise ServiceError(ErrorCode.FORBIDDEN, "This needs the moderator role.")
    return principal


class _Jwk(NamedTuple):
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any


def _reject(reason: str, message: str = "Invalid token") -> ServiceError:
    # Only the reason is logged: tokens and claims are credentials or PII.
    log.debug("jwt_rejected", reason=reason)
    return ServiceError(ErrorCode.UNAUTHENTICATED, message, reason=reason)


def _parse_jwks(raw: bytes) -> list[_Jwk]:
    doc = json.loads(raw)
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError("JWKS document has no keys list")
    keys: list[_Jwk] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        kty = entry.get("kty")
        if kty not in _JWK_PARSERS:  # "oct" keys would let a JWKS smuggle in HMAC secrets
            continue
        try:
            key = _JWK_PARSERS[kty](entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # one bad key must not take the whole set down
        if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            key = key.public_key()
        kid, crv, alg = entry.get("kid"), entry.get("crv"), entry.get("alg")
        keys.append(_Jwk(kid if isinstance(kid, str) else None, kty, crv, alg, key))
    return keys


def _fetch(url: str) -> bytes:
    # urllib also opens file:// and ftp://; a JWKS URL is only ever fetched over HTTP(S).
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("JWKS URL must be http or https")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked above
    with urllib.request.urlopen(request, timeout=_JWKS_TIMEOUT_SECONDS) as response:  # noqa: S310
        body: bytes = response.read(_MAX_JWKS_BYTES + 1)
    if len(body) > _MAX_JWKS_BYTES:
        raise ValueError("JWKS document too large")
    return body


def _fits(jwk: _Jwk, alg: str) -> bool:
    if jwk.kty != _KEY_FAMILY[alg] or (jwk.alg is not None and jwk.alg != alg):
        return False
    return alg != "ES256" or jwk.crv == "P-256"


# RFC 8725 §3.11 explicit typing: an access token says it is a JWT (or an RFC 9068 access token), and
# a token typed as anything else (an ID token, a logout token) is not accepted here.
_ACCEPTED_TYPES = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})


def _check_header(header: dict[str, Any]) -> None:
    """Refuse a token whose header asks for more than we do. ``jku``, ``x5u``, ``jwk`` and ``x5c`` are
    never read: keys come only from settings, so a token cannot bring its own key."""
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYPES):
        raise _reject("bad_type", "Token type is not accepted")
    if "crit" in header:
        # We implement no JWS extensions; a critical one we do not understand must fail (RFC 7515 §4.1.11).
        raise _reject("crit_not_supported", "Token uses an unsupported critical header")


def _select(keys: list[_Jwk], alg: str, kid: str | None) -> Any | None:
    if kid is not None:
        named = [k for k in keys if k.kid == kid]
        if named and not _fits(named[0], alg):
            # A kid naming a key of another family is confusion or misconfiguration: no fallback.
            raise _reject("key_mismatch", "Token signing key does not match its algorithm")
        return named[0].key if named else None
    fitting = [k for k in keys if _fits(k, alg)]
    return fitting[0].key if len(fitting) == 1 else None


def roles_at(claims: dict[str, Any], path: str) -> frozenset[str]:
    """The non-empty strings of the list at dotted ``path`` (``app_metadata.roles``); anything else is no
    roles: a string, a number or a missing level never grants one."""
    node: Any = claims
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, list):
        return frozenset()
    return frozenset(r for r in node if isinstance(r, str) and r)


def _scopes(claims: dict[str, Any], roles: frozenset[str]) -> frozenset[str]:
    found: set[str] = set(roles)
    for name in ("scope", "scopes"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str) and v)
    return frozenset(found)


class JwtVerifier:
    """Verifies Supabase access tokens against :class:`AuthSettings`; safe to share per process."""

    def __init__(self, settings: AuthSettings, moderation: ModerationSettings | None = None) -> None:
        """Keep the settings; JWKS sources are read lazily on the first asymmetric token. ``moderation``
        says where roles live in the token and which one makes a moderator (defaults when omitted)."""
        self._settings = settings
        self._moderation = moderation or ModerationSettings()
        # Intersect because AuthSettings(...) kwargs bypass msgspec's Literal validation.
        self._allowed = frozenset(settings.algorithms) & _SUPPORTED_ALGORITHMS
        self._file_keys: list[_Jwk] | None = None
        self._url_keys: list[_Jwk] = []
        self._url_fetched_at: float | None = None
        self._last_fetch_attempt: float | None = None
        self._lock = asyncio.Lock()
        self._clock = time.monotonic
        self._verified: dict[str, tuple[float, Principal]] = {}

    async def verify_authorization_header(self, header: str | None) -> Principal:
        """Verify an ``Authorization: Bearer <token>`` header value (scheme case-insensitive)."""
        if not header or not header.strip():
            raise _reject("missing_credentials", "Authentication required")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _reject("bad_scheme", "Authorization header must be a Bearer token")
        return await self.verify(token.strip())

    async def verify(self, token: str) -> Principal:
        """Verify signature and claims; raise ``ServiceError(UNAUTHENTICATED)`` on any failure."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise _reject("malformed", "Token is malformed")
        hit = self._verified.get(token)
        if hit is not None:
            remembered_until, principal = hit
            still_valid = principal.expires_at.timestamp() + self._settings.leeway_seconds > time.time()
            if still_valid and self._clock() < remembered_until:
                return principal
            del self._verified[token]
        principal = await self._verify_uncached(token)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (self._clock() + _VERIFIED_CACHE_SECONDS, principal)
        return principal

    async def _verify_uncached(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _reject("malformed", "Token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise _reject("alg_not_allowed", "Token signing algorithm is not allowed")
        _check_header(header)
        key = self._settings.jwt_secret if alg == "HS256" else await self._asymmetric_key(alg, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],  # exactly the one alg whose key family we just chose
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as exc:
            # `from None`: PyJWT messages can quote payload fragments; keep them out of tracebacks.
            raise next(_reject(r, m) for t, r, m in _PYJWT_FAILURES if isinstance(exc, t)) from None
        return self._principal(claims)

    async def aclose(self) -> None:
        """Drop cached keys; nothing else is held open between calls."""
        self._file_keys, self._url_keys = None, []
        self._verified.clear()
        self._url_fetched_at = self._last_fetch_attempt = None

    def _principal(self, claims: dict[str, Any]) -> Principal:
        try:
            user_id = uuid.UUID(claims["sub"])
        except (ValueError, TypeError, AttributeError):
            raise _reject("bad_subject", "Token subject is not a user id") from None
        role = claims.get("role", "authenticated")
        if not isinstance(role, str):
            raise _reject("malformed", "Token is malformed")
        try:
            expires_at = datetime.datetime.fromtimestamp(int(claims["exp"]), tz=datetime.UTC)
        except (ValueError, TypeError, OverflowError, OSError):
            raise _reject("malformed", "Token is malformed") from None
        roles = roles_at(claims, self._moderation.roles_claim)
        return Principal(
            user_id=user_id,
            role=role,
            is_service_role=role == self._settings.service_role,
            scopes=_scopes(claims, roles),
            expires_at=expires_at,
            roles=roles,
            is_moderator=self._moderation.moderator_role in roles,
        )

    async def _asymmetric_key(self, alg: str, kid: Any) -> Any:
        if kid is not None and not isinstance(kid, str):
            raise _reject("malformed", "Token is malformed")
        key = _select(await self._keys(), alg, kid)
        if key is None and self._settings.jwks_url and self._may_refetch(self._clock()):
            # Unknown kid: the issuer may have rotated keys since our last fetch.
            key = _select(await self._keys(force=True), alg, kid)
        if key is None:
            raise _reject("unknown_kid", "Token signing key is unknown")
        return key

    def _may_refetch(self, now: float) -> bool:
        last = self._last_fetch_attempt
        return last is None or now - last >= _REFETCH_MIN_INTERVAL_SECONDS

    async def _keys(self, *, force: bool = False) -> list[_Jwk]:
        settings = self._settings
        if settings.jwks_file and self._file_keys is None:
            try:
                raw = await asyncio.to_thread(Path(settings.jwks_file).read_bytes)
                self._file_keys = _parse_jwks(raw)
            except (OSError, ValueError) as exc:
                # Not cached: a file briefly missing during a deploy must not stick forever.
                log.warning("jwks_file_unusable", error=type(exc).__name__)
        if settings.jwks_url:
            async with self._lock:  # concurrent verifies share one fetch instead of stampeding
                now = self._clock()
                fetched = self._url_fetched_at
                stale = fetched is None or now - fetched >= settings.jwks_cache_seconds
                if (force or stale) and self._may_refetch(now):
                    self._last_fetch_attempt = now
                    try:
                        self._url_keys = _parse_jwks(await asyncio.to_thread(_fetch, settings.jwks_url))
                        self._url_fetched_at = now
                    except (OSError, ValueError, http.client.HTTPException) as exc:
                        # Keep serving the last good keys; an outage must not log everyone out.
                        log.warning("jwks_fetch_failed", error=type(exc).__name__)
        return [*(self._file_keys or ()), *self._url_keys]


def mint_token(
    secret: str,
    user_id: uuid.UUID,
    *,
    role: str = "authenticated",
    audience: str = "authenticated",
    ttl_seconds: int = 3600,
    issuer: str | None = None,
    extra_claims: dict[str, Any] | None = None,
) -> str:
    """HS256 development token shaped like Supabase's (sub, aud, role, iat, exp, email-less)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": str(user_id), "aud": audience, "role": role, "iat": now, "exp": now + ttl_seconds}
    if issuer is not None:
        claims["iss"] = issuer
    claims.update(extra_claims or {})
    return jwt.encode(claims, secret, algorithm="HS256")
