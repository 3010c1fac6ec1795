"""Rate-limit enforcement shared by the use cases."""

from __future__ import annotations

import math
from datetime import datetime

from app.adapters.rate_limit import RateLimiter
from app.errors import ErrorCode, ServiceError

__all__ = ["cooling_down", "enforce_limit"]


async def enforce_limit(limiter: RateLimiter, key: str, per_minute: int) -> None:
    """Count one request for ``key``; raise RATE_LIMITED with ``retryAfter`` (whole seconds) when over."""
    decision = await limiter.hit(key, per_minute, 60.0)
    if not decision.allowed:
        raise ServiceError(
            ErrorCode.RATE_LIMITED,
            "Too many requests; try again later.",
            retryAfter=max(1, math.ceil(decision.retry_after)),
        )


def cooling_down(retry_at: datetime, now: datetime) -> ServiceError:
    """RATE_LIMITED for a requester in their cooldown or over their daily limit, saying how long: seconds for
    a short wait, the UTC time for a long one (``retryAfter`` and ``retryAvailableAt`` for clients)."""
    wait = max(1, math.ceil((retry_at - now).total_seconds()))
    when = f"in {wait} seconds" if wait <= 120 else f"at {retry_at:%H:%M:%S} UTC"
    return ServiceError(
        ErrorCode.RATE_LIMITED,
        f"Take a moment before trying this quiz again: try again {when}.",
        retryAfter=wait,
        retryAvailableAt=retry_at.isoformat(),
    )
