"""Rate-limit enforcement shared by the use cases."""

from __future__ import annotations

import math

from app.adapters.rate_limit import RateLimiter
from app.errors import ErrorCode, ServiceError

__all__ = ["enforce_limit"]


async def enforce_limit(limiter: RateLimiter, key: str, per_minute: int) -> None:
    """Count one request for ``key``; raise RATE_LIMITED with ``retryAfter`` (whole seconds) when over."""
    decision = await limiter.hit(key, per_minute, 60.0)
    if not decision.allowed:
        raise ServiceError(
            ErrorCode.RATE_LIMITED,
            "Too many requests; try again later.",
            retryAfter=max(1, math.ceil(decision.retry_after)),
        )
