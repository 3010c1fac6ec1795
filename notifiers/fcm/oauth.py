"""OAuth 2.0 access tokens for a Google service account: the JWT bearer grant (RFC 7523), RS256, cached."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import jwt
import msgspec

from notifiers.fcm.config import ServiceAccount
from plugins.notifier import parse_retry_after

__all__ = ["JWT_BEARER_GRANT", "AccessTokenError", "ServiceAccountTokens"]

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_ASSERTION_LIFETIME = 3600  # Google's maximum


class _TokenResponse(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: float = 3600.0
    token_type: str = "Bearer"  # noqa: S105 - a scheme name


class AccessTokenError(RuntimeError):
    """No access token: ``retryable`` when the token endpoint may answer later (5xx, 429, transport)."""

    def __init__(self, detail: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


class ServiceAccountTokens:
    """Exchanges a signed assertion for an access token at ``token_uri`` and caches it until
    ``refresh_margin`` seconds before it expires. Concurrent callers share one exchange."""

    def __init__(
        self,
        account: ServiceAccount,
        *,
        scope: str,
        token_uri: str,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._account = account
        self._scope = scope
        self._token_uri = token_uri
        self._margin = refresh_margin
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.exchanges = 0  # how many tokens were fetched (for tests and describe())

    def assertion(self) -> str:
        """The signed JWT this account presents (header ``kid`` = the key id)."""
        now = int(self._clock())
        claims = {
            "iss": self._account.client_email,
            "sub": self._account.client_email,
            "scope": self._scope,
            "aud": self._token_uri,
            "iat": now,
            "exp": now + _ASSERTION_LIFETIME,
        }
        headers = {"kid": self._account.private_key_id} if self._account.private_key_id else None
        return jwt.encode(claims, self._account.private_key, algorithm="RS256", headers=headers)

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is still ``token``, when given), e.g. after a 401."""
        if token is None or token == self._token:
            self._token, self._expires_at = None, 0.0

    async def token(self, client: httpx.AsyncClient) -> str:
        """A valid access token, fetching one when none is cached or it is about to expire."""
        if self._token and self._clock() < self._expires_at - self._margin:
            return self._token
        async with self._lock:
            if self._token and self._clock() < self._expires_at - self._margin:
                return self._token
            self._token, self._expires_at = await self._exchange(client)
            return self._token

    async def _exchange(self, client: httpx.AsyncClient) -> tuple[str, float]:
        started = self._clock()
        try:
            response = await client.post(
                self._token_uri,
                data={"grant_type": JWT_BEARER_GRANT, "assertion": self.assertion()},
                headers={"accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise AccessTokenError(f"token endpoint: {type(exc).__name__}", retryable=True) from None
        if response.status_code != 200:
            retryable = response.status_code == 429 or response.status_code >= 500
            reason = _oauth_error(response)
            raise AccessTokenError(
                f"token endpoint: http {response.status_code} {reason}".strip(),
                retryable=retryable,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        try:
            body = msgspec.json.decode(response.content, type=_TokenResponse)
        except msgspec.DecodeError:
            raise AccessTokenError("token endpoint: malformed response", retryable=True) from None
        self.exchanges += 1
        return body.access_token, started + body.expires_in


def _oauth_error(response: httpx.Response) -> str:
    """The OAuth ``error`` code of a failed exchange (``invalid_grant``), never its description."""
    try:
        error = msgspec.json.decode(response.content).get("error", "")
    except (msgspec.DecodeError, AttributeError):
        return ""
    return error if isinstance(error, str) and error.isidentifier() else ""
