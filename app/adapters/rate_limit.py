"""Rate limits by GCRA (generic cell rate algorithm): smooth, one number of state per key.

Each key keeps a theoretical arrival time (TAT). A hit moves it ``period / limit`` later, starting from
``max(TAT, now)``; the hit is allowed while the TAT stays within ``period`` of now, so ``limit`` hits may come
in one burst and then one per ``period / limit``. A refused hit changes nothing and says how long until
one would be allowed. The memory and Redis implementations give the same decisions for the same hits (to the
microsecond, the resolution of the Redis server's clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, Protocol, Self

from msgspec import Struct

from app.adapters.redis_support import REDIS_ERRORS, BackendHealth, pinged_health, redis_client

__all__ = ["GCRA_SCRIPT", "MemoryRateLimiter", "RateDecision", "RateLimiter", "RedisRateLimiter"]

# The tolerance absorbs float rounding of accumulated intervals, so a burst of exactly ``limit`` is never
# cut short by one.
_TOLERANCE_SECONDS = 1e-9


class RateDecision(Struct, frozen=True):
    """Whether a hit is allowed; if not, how many seconds until it would be."""

    allowed: bool
    retry_after: float = 0.0


class RateLimiter(Protocol):
    """``hit`` counts one request against ``limit`` per ``period_seconds`` for ``key``."""

    async def hit(self, key: str, limit: int, period_seconds: float) -> RateDecision: ...
    async def health(self) -> dict[str, Any]:
        """The ``/ready`` entry: at least ``backend`` and ``ok``."""
        ...

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
        if new_tat - now > period_seconds + _TOLERANCE_SECONDS:
            return RateDecision(False, round(new_tat - now - period_seconds, 3))
        self._tat[key] = new_tat
        return RateDecision(True)

    async def health(self) -> dict[str, Any]:
        return {"backend": "memory", "ok": True, "keys": len(self._tat)}


# Redis TIME counts whole microseconds, so the server's tolerance is one microsecond: a hit is never refused
# for arriving a fraction of a microsecond "early" because its interval is not a whole number of them.
_SERVER_TOLERANCE_US = "1"

GCRA_SCRIPT = """
-- GCRA, atomically. KEYS[1]: the key's TAT in microseconds. ARGV[1]: emission interval (period / limit)
-- and ARGV[2]: period, both in microseconds; ARGV[3]: tolerance in microseconds; ARGV[4]: optional "now"
-- in microseconds (tests only; otherwise the server's clock, so every instance agrees).
-- Returns {1, "0"} when allowed, {0, retry_after_us} when refused (a string: Lua numbers become integers).
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local now = ARGV[4] and tonumber(ARGV[4])
if not now then
  if redis.replicate_commands then redis.replicate_commands() end  -- TIME before a write, Redis < 5
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = tat - now + interval  -- how far the new TAT would be ahead of now
if ahead > period + tolerance then
  return {0, string.format('%.17g', ahead - period)}
end
-- The key expires when its TAT passes: a fully recovered budget needs no state.
redis.call('SET', KEYS[1], string.format('%.17g', now + ahead), 'PX', math.max(1, math.ceil(ahead / 1000)))
return {1, '0'}
"""


class RedisRateLimiter:
    """GCRA in Redis, shared by every instance: one Lua script per hit (atomic; EVALSHA, reloaded after a
    server restart), timed by the Redis server's clock so instances with skewed clocks agree.

    Keys are ``<prefix><key>``. When Redis is unreachable ``failure_mode`` decides: ``"open"`` allows the
    hit (availability first: limits pause during the outage), ``"closed"`` refuses it with
    ``retry_after=closed_retry_after`` (abuse protection first: the limited operations pause). Either way
    the failure is logged once per outage and counted in ``health()``.

    ``url`` e.g. ``redis://host:6379/0``; ``timeout`` bounds each connect, read and write (seconds);
    ``cooldown_seconds`` is how long Redis is skipped after a failure.
    """

    def __init__(
        self,
        url: str,
        *,
        failure_mode: Literal["open", "closed"] = "open",
        closed_retry_after: float = 1.0,
        prefix: str = "ck:rl:",
        timeout: float = 0.5,
        cooldown_seconds: float = 1.0,
    ) -> None:
        if failure_mode not in ("open", "closed"):
            raise ValueError(f"failure_mode must be 'open' or 'closed', got {failure_mode!r}")
        self._redis = redis_client(url, timeout=timeout, name="ck-rate-limit")
        self._script = self._redis.register_script(GCRA_SCRIPT)
        self._prefix = prefix
        self._failure_mode = failure_mode
        self._closed_retry_after = closed_retry_after
        self._health = BackendHealth("rate_limit", cooldown_seconds=cooldown_seconds)
        self._now: Callable[[], float] | None = None  # tests: a fake clock (seconds) instead of Redis TIME

    async def __aenter__(self) -> Self:
        await self.health()  # logs at start-up when Redis is away; never fails start-up
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._redis.aclose()

    def _unavailable(self) -> RateDecision:
        if self._failure_mode == "open":
            return RateDecision(True)
        return RateDecision(False, self._closed_retry_after)

    async def hit(self, key: str, limit: int, period_seconds: float) -> RateDecision:
        if not self._health.available():
            return self._unavailable()
        period_us = period_seconds * 1e6
        args = [repr(period_us / limit), repr(period_us), _SERVER_TOLERANCE_US]
        if self._now is not None:
            args.append(repr(round(self._now() * 1e6)))
        try:
            allowed, retry_after_us = await self._script(keys=[self._prefix + key], args=args)
        except REDIS_ERRORS as exc:
            self._health.failed("hit", exc)
            return self._unavailable()
        self._health.succeeded()
        if allowed:
            return RateDecision(True)
        return RateDecision(False, round(float(retry_after_us) / 1e6, 3))

    async def health(self) -> dict[str, Any]:
        """Pings Redis; see :func:`app.adapters.redis_support.pinged_health` (plus ``failureMode``)."""
        return await pinged_health(self._redis, self._health, failureMode=self._failure_mode)
