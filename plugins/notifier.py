"""The notifier contract: what a push-notification plugin receives and returns. Importable without Litestar.

A notifier delivers :class:`PushMessage` batches to one push service (FCM, APNs, ...) and reports one
:class:`PushOutcome` per message. It makes **one** attempt per message: the service retries the
``retryable`` outcomes with backoff, prunes the ``invalid_token`` ones and logs the rest.
"""

from __future__ import annotations

import email.utils
import enum
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Protocol, runtime_checkable

from msgspec import Meta, Struct

__all__ = ["Notifier", "PushMessage", "PushOutcome", "PushStatus", "parse_retry_after"]


class PushStatus(str, enum.Enum):
    """What became of one message."""

    DELIVERED = "delivered"  # the push service accepted it
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - dead token (app uninstalled, wrong app): prune it
    RETRYABLE = "retryable"  # try again later (429, 5xx, timeout, connection error, expired credentials)
    FAILED = "failed"  # permanent for this message (payload refused, credentials rejected): do not retry


class PushMessage(Struct, frozen=True, kw_only=True):
    """One notification for one device.

    ``data`` is delivered to the app beside the visible alert (string values only, as FCM requires; APNs
    gets them as top-level payload keys, so ``aps`` is reserved). ``collapse_key`` lets the push service
    replace an undelivered older message with the same key (FCM ``collapse_key``, APNs
    ``apns-collapse-id``, at most 64 bytes). ``ttl_seconds`` is how long the service keeps trying to reach
    an offline device (``0``: now or never).
    """

    token: Annotated[str, Meta(min_length=1, max_length=4096)]
    platform: str
    title: str
    body: str
    data: dict[str, str] = {}
    collapse_key: Annotated[str, Meta(max_length=64)] | None = None
    ttl_seconds: Annotated[int, Meta(ge=0, le=2_419_200)] = 86_400


class PushOutcome(Struct, frozen=True, kw_only=True):
    """A notifier's report on one message, matched to it by ``token``.

    ``detail`` is a short, token-free reason for logs (``"UNREGISTERED"``, ``"http 503"``,
    ``"ConnectTimeout"``). ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    """

    token: str
    status: PushStatus
    detail: str = ""
    retry_after: float | None = None


@runtime_checkable
class Notifier(Protocol):
    """A named push channel for some device platforms.

    ``send`` receives a batch (possibly empty) of messages for this notifier's ``platforms`` and returns
    exactly one :class:`PushOutcome` per message, in any order, matched by ``token``. It makes one attempt
    per message, must be safe to call concurrently, and should not raise: a transport failure is a
    ``retryable`` outcome. (An exception fails the whole batch as ``retryable``; a missing outcome counts
    as ``failed``.)

    A notifier that holds resources (an HTTP client) may also be an async context manager: the service
    enters it at start-up and exits it at shutdown.
    """

    name: str
    platforms: frozenset[str]

    async def send(self, batch: Sequence[PushMessage]) -> list[PushOutcome]: ...


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds or an HTTP date; ``None`` when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
