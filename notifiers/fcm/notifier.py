"""The FCM HTTP v1 notifier: one ``messages:send`` request per message, results classified per token."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Self

import httpx
import msgspec

from notifiers.fcm.config import FCM_SCOPE, FcmConfig, ServiceAccount
from notifiers.fcm.oauth import AccessTokenError, ServiceAccountTokens
from notifiers.http_notifier import HttpNotifier
from plugins.notifier import PushMessage, PushOutcome, PushStatus, parse_retry_after

__all__ = ["FcmNotifier", "classify_response", "fcm_request_body"]

_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_DEAD_TOKEN_CODES = {"UNREGISTERED", "SENDER_ID_MISMATCH"}
_RETRYABLE_CODES = {"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"}


def fcm_request_body(message: PushMessage, priority: str = "high") -> dict[str, Any]:
    """The ``messages:send`` body for ``message``."""
    android: dict[str, Any] = {"priority": priority, "ttl": f"{message.ttl_seconds}s"}
    if message.collapse_key:
        android["collapse_key"] = message.collapse_key
    body: dict[str, Any] = {
        "token": message.token,
        "notification": {"title": message.title, "body": message.body},
        "android": android,
    }
    if message.data:
        body["data"] = dict(message.data)
    return {"message": body}


def _error_of(response: httpx.Response) -> tuple[str, str, list[Mapping[str, Any]]]:
    """(``error.status``, FCM ``errorCode``, ``details``) of an error response; empty when not JSON."""
    try:
        error = msgspec.json.decode(response.content).get("error", {})
        details = [d for d in error.get("details", []) if isinstance(d, dict)]
        status = str(error.get("status", ""))
    except (msgspec.DecodeError, AttributeError, TypeError):
        return "", "", []
    code = next((str(d.get("errorCode", "")) for d in details if d.get("@type") == _FCM_ERROR), "")
    # Enum names only: whatever else a server (or a proxy) puts here stays out of outcomes and logs.
    return (status if status.isidentifier() else ""), (code if code.isidentifier() else ""), details


def _about_the_token(details: list[Mapping[str, Any]]) -> bool:
    """Whether a 400 names the token as the invalid field (``message.token``), as FCM does for a malformed
    or truncated registration token; any other invalid argument is our request's fault."""
    for detail in details:
        if detail.get("@type") == _BAD_REQUEST:
            for violation in detail.get("fieldViolations", []):
                if isinstance(violation, dict) and violation.get("field") == "message.token":
                    return True
    return False


def classify_response(token: str, response: httpx.Response) -> PushOutcome:
    """Map an FCM v1 response to an outcome (the caller handles 401 by renewing its access token)."""
    status = response.status_code
    if status == 200:
        return PushOutcome(token=token, status=PushStatus.DELIVERED)
    error_status, code, details = _error_of(response)
    detail = " ".join(part for part in (f"http {status}", code or error_status) if part)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if code in _DEAD_TOKEN_CODES or (status == 404 and not code and error_status == "NOT_FOUND"):
        outcome = PushStatus.INVALID_TOKEN
    elif status == 400 and (code or error_status) == "INVALID_ARGUMENT" and _about_the_token(details):
        outcome = PushStatus.INVALID_TOKEN
    elif code in _RETRYABLE_CODES or status == 429 or status >= 500:
        outcome = PushStatus.RETRYABLE
    else:
        outcome = PushStatus.FAILED
    return PushOutcome(token=token, status=outcome, detail=detail, retry_after=retry_after)


class FcmNotifier(HttpNotifier):
    """Sends through FCM HTTP v1 with a service account's OAuth 2.0 access token (cached, renewed
    before it expires, dropped on a 401). Open it (``async with``) before sending."""

    name = "fcm"

    def __init__(
        self,
        config: FcmConfig,
        account: ServiceAccount,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.platforms = frozenset(config.platforms)
        self.tokens = ServiceAccountTokens(
            account,
            scope=FCM_SCOPE,
            token_uri=config.token_uri,
            refresh_margin=config.token_refresh_margin_seconds,
            clock=clock,
        )
        super().__init__(config.max_concurrency, transport)

    async def __aenter__(self) -> Self:
        self._client = httpx.AsyncClient(
            timeout=self.config.timeout_seconds,
            limits=httpx.Limits(max_connections=self.config.max_concurrency),
            transport=self._transport,
            headers={"user-agent": "connection-key-fcm/1"},
        )
        return self

    def describe(self) -> dict[str, Any]:
        return {"projectId": self.config.project_id, "platforms": sorted(self.platforms), "open": bool(self._client)}

    async def _deliver(self, client: httpx.AsyncClient, message: PushMessage) -> PushOutcome:
        async with self._semaphore:
            try:
                access_token = await self.tokens.token(client)
            except AccessTokenError as exc:
                status = PushStatus.RETRYABLE if exc.retryable else PushStatus.FAILED
                return PushOutcome(token=message.token, status=status, detail=exc.detail, retry_after=exc.retry_after)
            try:
                response = await client.post(
                    self.config.send_url,
                    json=fcm_request_body(message, self.config.android_priority),
                    headers={"authorization": f"Bearer {access_token}"},
                )
            except httpx.HTTPError as exc:
                return PushOutcome(token=message.token, status=PushStatus.RETRYABLE, detail=type(exc).__name__)
        if response.status_code == 401:
            # An expired or revoked access token: fetch a new one on the next attempt.
            self.tokens.invalidate(access_token)
            _, code, _ = _error_of(response)
            if code == "THIRD_PARTY_AUTH_ERROR":  # FCM could not authenticate to APNs / web push
                return PushOutcome(token=message.token, status=PushStatus.FAILED, detail=f"http 401 {code}")
            return PushOutcome(token=message.token, status=PushStatus.RETRYABLE, detail="http 401 UNAUTHENTICATED")
        return classify_response(message.token, response)
