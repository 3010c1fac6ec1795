"""Rate limits by GCRA (generic cell rate algorithm): smooth, one number of state per key."""

from __future__ import annotations

import time
from typing import Protocol, Self

from msgspec import Struct

__all__ = ["MemoryRateLimiter", "RateDecision", "RateLimiter"]


class RateDecision(Struct, frozen=True):
    """Whether a hit is allowed; if not, how many seconds until it would be."""

    allowed: bool
    retry_after: float = 0.0


class RateLimiter(Protocol):
    """``hit`` counts one request against ``limit`` per ``period_seconds`` for ``key``."""

    async def hit(self, key: str, limit: int, period_seconds: float) -> RateDecision: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...


class MemoryRateLimiter:
    """GCRA in process memory; keys whose budget has fully recovered are swept so memory stays bounded."""

    _SWEEP_EVERY = 1024

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._hits = 0
        self._now = time.monotonic

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._tat.clear()

    async def hit(self, key: str, limit: int, period_seconds: float) -> RateDecision:
        now = self._now()
        self._hits += 1
        if self._hits % self._SWEEP_EVERY == 0:
            self._tat = {k: t for k, t in self._tat.items() if t > now}
        interval = period_seconds / limit
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + interval
        # The tolerance absorbs float rounding of accumulated intervals, so a burst of exactly
        # ``limit`` is never cut short by one.
        if new_tat - now > period_seconds + 1e-9:
            return RateDecision(False, round(new_tat - now - period_seconds, 3))
        self._tat[key] = new_tat
        return RateDecision(True)
