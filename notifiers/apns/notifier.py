"""The APNs notifier: the provider API (``POST /3/device/<token>``) over HTTP/2 with token authentication."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Self

import httpx
import msgspec

from notifiers.apns.config import ApnsConfig
from notifiers.apns.provider_token import ProviderToken
from notifiers.http_notifier import HttpNotifier
from plugins.notifier import PushMessage, PushOutcome, PushStatus, parse_retry_after

__all__ = ["ApnsNotifier", "apns_headers", "apns_payload", "classify_response"]

_DEAD_TOKEN_REASONS = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
_RETRYABLE_REASONS = {
    "ExpiredProviderToken",  # re-signed before the next attempt
    "TooManyProviderTokenUpdates",
    "TooManyRequests",
    "IdleTimeout",
    "InternalServerError",
    "ServiceUnavailable",
    "Shutdown",
}
_HEX_TOKEN = re.compile(r"[0-9A-Fa-f]{64,200}")


def apns_payload(message: PushMessage) -> dict[str, Any]:
    """``{"aps": {"alert": {...}, "sound": "default"}, **data}``; a ``data`` key named ``aps`` is dropped."""
    payload: dict[str, Any] = {k: v for k, v in message.data.items() if k != "aps"}
    payload["aps"] = {"alert": {"title": message.title, "body": message.body}, "sound": "default"}
    return payload


def apns_headers(message: PushMessage, config: ApnsConfig, provider_token: str, now: float) -> dict[str, str]:
    """The request headers for ``message``."""
    headers = {
        "authorization": f"bearer {provider_token}",
        "apns-topic": config.topic,
        "apns-push-type": "alert",
        "apns-priority": str(config.priority),
        # 0: deliver now or never; otherwise APNs stores the notification until then.
        "apns-expiration": "0" if message.ttl_seconds == 0 else str(int(now) + message.ttl_seconds),
    }
    if message.collapse_key:
        headers["apns-collapse-id"] = message.collapse_key
    return headers


def _reason_of(response: httpx.Response) -> str:
    try:
        reason = msgspec.json.decode(response.content).get("reason", "")
    except (msgspec.DecodeError, AttributeError):
        return ""
    return reason if isinstance(reason, str) and reason.isidentifier() else ""


def classify_response(token: str, response: httpx.Response) -> PushOutcome:
    """Map an APNs response to an outcome."""
    status = response.status_code
    if status == 200:
        return PushOutcome(token=token, status=PushStatus.DELIVERED)
    reason = _reason_of(response)
    detail = f"http {status} {reason}".strip()
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 410 or reason in _DEAD_TOKEN_REASONS:
        outcome = PushStatus.INVALID_TOKEN
    elif reason in _RETRYABLE_REASONS or status == 429 or status >= 500:
        outcome = PushStatus.RETRYABLE
    else:  # payload, topic or credentials refused: retrying the same request cannot help
        outcome = PushStatus.FAILED
    return PushOutcome(token=token, status=outcome, detail=detail, retry_after=retry_after)


class ApnsNotifier(HttpNotifier):
    """Sends alert notifications through APNs, one request (stream) per device, ``max_concurrency`` in
    flight over one HTTP/2 connection pool. Open it (``async with``) before sending."""

    name = "apns"

    def __init__(
        self,
        config: ApnsConfig,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.platforms = frozenset(config.platforms)
        self.provider_token = ProviderToken(
            config.team_id,
            config.key_id,
            config.private_key,
            refresh_seconds=config.token_refresh_seconds,
            clock=clock,
        )
        self._clock = clock
        super().__init__(config.max_concurrency, transport)

    async def __aenter__(self) -> Self:
        cleartext = self.config.base_url.startswith("http://")
        self._client = httpx.AsyncClient(
            base_url=self.config.base_url,
            http2=self.config.http2,
            # h2c needs prior knowledge (no ALPN without TLS); over TLS both are offered and APNs picks h2.
            http1=not (self.config.http2 and cleartext),
            verify=self.config.ssl_context(),
            timeout=self.config.timeout_seconds,
            transport=self._transport,
        )
        return self

    def describe(self) -> dict[str, Any]:
        return {"topic": self.config.topic, "platforms": sorted(self.platforms), "open": bool(self._client)}

    async def _deliver(self, client: httpx.AsyncClient, message: PushMessage) -> PushOutcome:
        if not _HEX_TOKEN.fullmatch(message.token):  # also keeps the token from escaping the URL path
            return PushOutcome(token=message.token, status=PushStatus.INVALID_TOKEN, detail="malformed token")
        provider_token = self.provider_token.current()
        async with self._semaphore:
            try:
                response = await client.post(
                    f"/3/device/{message.token}",
                    content=msgspec.json.encode(apns_payload(message)),
                    headers=apns_headers(message, self.config, provider_token, self._clock()),
                )
            except httpx.HTTPError as exc:
                return PushOutcome(token=message.token, status=PushStatus.RETRYABLE, detail=type(exc).__name__)
        outcome = classify_response(message.token, response)
        if outcome.detail.endswith(("ExpiredProviderToken", "InvalidProviderToken")):
            self.provider_token.invalidate(provider_token)
        return outcome
