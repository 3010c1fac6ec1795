"""What the Redis adapters share: how a client is built, which errors mean "Redis is unavailable", and the
health record each adapter keeps for ``/ready``.

Every Redis adapter degrades instead of failing a request when Redis is unreachable (each documents how).
After a failure an adapter stops trying Redis for ``cooldown_seconds`` (a small circuit breaker), so an
outage costs one connection timeout per cooldown rather than one per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["REDIS_ERRORS", "BackendHealth", "describe_error", "pinged_health", "redis_client"]

log = structlog.get_logger(__name__)

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)
"""Errors that mean Redis did not answer as expected (refused, reset, timed out, or a server error reply).
``TimeoutError`` and ``ConnectionError`` of the standard library are ``OSError`` subclasses."""


def redis_client(url: str, *, timeout: float, retries: int = 1, name: str | None = None) -> Redis:
    """A pooled asyncio client that fails fast: ``timeout`` bounds each connect, read and write, and a
    command is retried ``retries`` times at once (enough to replace a pooled connection that a server
    restart closed). Nothing connects until the first command."""
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=0,
        client_name=name,
    )


def describe_error(exc: BaseException) -> str:
    """The error's type and message, short: safe to log and to show in ``/ready`` (Redis error replies
    name the command or the address, never a stored value)."""
    message = str(exc)
    return f"{type(exc).__name__}: {message[:200]}" if message else type(exc).__name__


class BackendHealth:
    """Counts failures and remembers the last one; logs once when Redis goes away and once when it is back.

    ``available()`` is false for ``cooldown_seconds`` after a failure: callers skip Redis meanwhile and
    answer as if it had failed (``skipped`` counts those answers).
    """

    def __init__(self, component: str, *, cooldown_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.component = component
        self.ok = True
        self.errors = 0
        self.skipped = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall-clock seconds, for people reading /ready
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._retry_at = 0.0

    def available(self) -> bool:
        """Whether to try Redis now (always, unless within the cooldown after a failure)."""
        if self.ok or self._clock() >= self._retry_at:
            return True
        self.skipped += 1
        return False

    def failed(self, operation: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = describe_error(exc)
        self.last_error_at = time.time()
        self._retry_at = self._clock() + self._cooldown
        if self.ok:
            log.warning("redis unavailable", component=self.component, operation=operation, error=self.last_error)
        self.ok = False

    def succeeded(self) -> None:
        if not self.ok:
            log.info("redis available again", component=self.component)
        self.ok = True

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        """The ``/ready`` entry: ``backend``, ``ok``, counters, the last error (type and message only)."""
        return {
            "backend": "redis",
            "ok": self.ok,
            "errors": self.errors,
            "skipped": self.skipped,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
            **extra,
        }


async def pinged_health(redis: Redis, health: BackendHealth, **extra: Any) -> dict[str, Any]:
    """PING Redis (within the client's timeout), record the outcome and return the ``/ready`` snapshot
    (``backend``, ``ok``, ``errors``, ``skipped``, ``lastError``, ``lastErrorAt`` and ``extra``)."""
    try:
        await redis.ping()
    except REDIS_ERRORS as exc:
        health.failed("ping", exc)
    else:
        health.succeeded()
    return health.snapshot(**extra)
