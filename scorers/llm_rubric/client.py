"""One OpenAI-compatible chat-completions endpoint: a single POST per :meth:`ChatClient.complete`, with
failures classified for the caller's retry policy. No retries, breaker or concurrency limit here."""

from __future__ import annotations

import asyncio
import email.utils
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import httpx
import msgspec
from msgspec import Struct

__all__ = ["CallFailedError", "ChatClient", "parse_retry_after"]

# Statuses worth retrying: timeouts, conflicts on the server's side, rate limits and server errors.
_RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


class CallFailedError(Exception):
    """One call failed. ``retryable`` says whether trying again may help; ``retry_after`` is the
    server's requested wait in seconds (from ``Retry-After``), when it gave one. The message never holds
    the URL or the key."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class _Message(Struct):
    content: str | None = None


class _Choice(Struct):
    message: _Message


class _Completion(Struct):
    choices: list[_Choice]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay in seconds or an HTTP date); ``None`` when
    absent or unreadable. Never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class ChatClient:
    """Posts chat completions to ``url`` with ``temperature: 0`` and a JSON-object response format.

    An async context manager owning one ``httpx.AsyncClient``; ``transport`` replaces the network (tests).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str = "",
        timeout_seconds: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._model = model
        self._timeout = timeout_seconds
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def complete(self, system: str, user: str) -> str:
        """One call: the reply's ``choices[0].message.content``.

        Raises :class:`CallFailedError`: retryable for a timeout (``timeout_seconds`` covers the whole
        call), a connection error, status 408/409/425/429/5xx or a reply that is not a chat completion;
        not retryable for any other status (e.g. 401 bad key, 400 bad request).
        """
        body = {
            "model": self._model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }
        try:
            # httpx's timeout applies per read/write; this one bounds the whole call, however the server
            # trickles its bytes.
            async with asyncio.timeout(self._timeout):
                response = await self._http.post(self._url, content=msgspec.json.encode(body))
        except TimeoutError:
            raise CallFailedError(f"timed out after {self._timeout:g}s", retryable=True) from None
        except httpx.TimeoutException:
            raise CallFailedError(f"timed out after {self._timeout:g}s", retryable=True) from None
        except httpx.TransportError as exc:
            # The exception's text can hold the URL; its type says enough.
            raise CallFailedError(f"connection error ({type(exc).__name__})", retryable=True) from None
        status = response.status_code
        if not response.is_success:
            retryable = status in _RETRYABLE_STATUSES or status >= 500
            retry_after = parse_retry_after(response.headers.get("retry-after")) if retryable else None
            raise CallFailedError(f"HTTP {status}", retryable=retryable, retry_after=retry_after)
        try:
            completion = msgspec.json.decode(response.content, type=_Completion)
        except msgspec.DecodeError as exc:
            raise CallFailedError(f"reply is not a chat completion: {exc}", retryable=True) from None
        if not completion.choices or completion.choices[0].message.content is None:
            raise CallFailedError("reply has no message content", retryable=True)
        return completion.choices[0].message.content
