"""Key-value cache with TTL, and single-use claims: in process memory, or in Redis shared by every instance.

Claims (``add_if_absent``) are how a single-use value (a nonce) is spent exactly once: the first caller to
claim a key gets ``True``, every later caller ``False`` until the claim's TTL ends. Claims live in their own
namespace: ``get`` and ``delete`` never see them, and a claim is never evicted early to make room.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any, Literal, Protocol, Self

from app.adapters.redis_support import REDIS_ERRORS, BackendHealth, pinged_health, redis_client

__all__ = ["Cache", "CacheUnavailable", "MemoryCache", "RedisCache"]


class CacheUnavailable(RuntimeError):
    """A claim could not be decided because the shared store is unreachable (``claim_failure="closed"``)."""


class Cache(Protocol):
    """Bytes in, bytes out; a miss is ``None``. A cache may forget anything at any time (not claims)."""

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def add_if_absent(self, key: str, ttl_seconds: float) -> bool:
        """Claim ``key`` for ``ttl_seconds`` (> 0): ``True`` for the first caller, ``False`` while claimed."""
        ...

    async def release(self, key: str) -> None:
        """Give a claim back early (the work it guarded failed and may be tried again)."""
        ...

    async def health(self) -> dict[str, Any]:
        """The ``/ready`` entry: at least ``backend`` and ``ok``."""
        ...

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...


def _check_claim_ttl(ttl_seconds: float) -> None:
    if not ttl_seconds > 0:
        raise ValueError(f"a claim needs a positive TTL, got {ttl_seconds!r}")


class MemoryCache:
    """A bounded LRU with per-entry expiry, for one process; claims are kept apart until they expire."""

    _SWEEP_CLAIMS_EVERY = 1024

    def __init__(self, max_entries: int = 10_000) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries
        self._claims: dict[str, float] = {}  # key -> expiry
        self._claimed = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._data.clear()
        self._claims.clear()

    async def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self._data[key] = (time.monotonic() + ttl_seconds, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def add_if_absent(self, key: str, ttl_seconds: float) -> bool:
        _check_claim_ttl(ttl_seconds)
        now = time.monotonic()
        self._claimed += 1
        if self._claimed % self._SWEEP_CLAIMS_EVERY == 0:
            self._claims = {k: expires for k, expires in self._claims.items() if expires > now}
        expires = self._claims.get(key)
        if expires is not None and expires > now:
            return False
        self._claims[key] = now + ttl_seconds
        return True

    async def release(self, key: str) -> None:
        self._claims.pop(key, None)

    async def health(self) -> dict[str, Any]:
        return {"backend": "memory", "ok": True, "entries": len(self._data)}


class RedisCache:
    """The same cache in Redis, shared by every instance.

    Keys are ``<prefix><key>`` (claims ``<prefix>claim:<key>``), values are stored as given. When Redis is
    unreachable the cache is bypassed: ``get`` misses, ``set`` and ``delete`` do nothing; each failure is
    logged (type and message, never a key's value) and counted in ``health()``. Claims cannot be bypassed,
    so ``claim_failure`` chooses: ``"closed"`` raises :class:`CacheUnavailable` (no value is ever spent
    twice; the caller answers "try again"), ``"open"`` claims in this process's memory instead (single use
    per instance while Redis is away). Redis must not evict claims early: use a ``noeviction`` or
    ``volatile-*`` maxmemory policy.

    ``url`` e.g. ``redis://host:6379/0``; ``timeout`` bounds each connect, read and write (seconds);
    ``cooldown_seconds`` is how long Redis is skipped after a failure.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ck:cache:",
        timeout: float = 0.5,
        cooldown_seconds: float = 1.0,
        claim_failure: Literal["open", "closed"] = "closed",
    ) -> None:
        if claim_failure not in ("open", "closed"):
            raise ValueError(f"claim_failure must be 'open' or 'closed', got {claim_failure!r}")
        self._redis = redis_client(url, timeout=timeout, name="ck-cache")
        self._prefix = prefix
        self._claim_failure = claim_failure
        self._local_claims = MemoryCache(max_entries=0)
        self._health = BackendHealth("cache", cooldown_seconds=cooldown_seconds)

    async def __aenter__(self) -> Self:
        await self.health()  # logs at start-up when Redis is away; never fails start-up
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._redis.aclose()

    async def get(self, key: str) -> bytes | None:
        if not self._health.available():
            return None
        try:
            value = await self._redis.get(self._prefix + key)
        except REDIS_ERRORS as exc:
            self._health.failed("get", exc)
            return None
        self._health.succeeded()
        return value

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        if not self._health.available():
            return
        try:
            if ttl_seconds > 0:
                await self._redis.set(self._prefix + key, value, px=max(1, math.ceil(ttl_seconds * 1000)))
            else:  # never served, as in memory; an older value must not be served either
                await self._redis.delete(self._prefix + key)
        except REDIS_ERRORS as exc:
            self._health.failed("set", exc)
            return
        self._health.succeeded()

    async def delete(self, key: str) -> None:
        if not self._health.available():
            return
        try:
            await self._redis.delete(self._prefix + key)
        except REDIS_ERRORS as exc:
            self._health.failed("delete", exc)
            return
        self._health.succeeded()

    async def add_if_absent(self, key: str, ttl_seconds: float) -> bool:
        _check_claim_ttl(ttl_seconds)
        if self._health.available():
            try:
                claimed = await self._redis.set(
                    f"{self._prefix}claim:{key}", b"1", px=max(1, math.ceil(ttl_seconds * 1000)), nx=True
                )
            except REDIS_ERRORS as exc:
                self._health.failed("add_if_absent", exc)
            else:
                self._health.succeeded()
                return bool(claimed)
        if self._claim_failure == "open":
            return await self._local_claims.add_if_absent(key, ttl_seconds)
        raise CacheUnavailable("the shared cache is unreachable; the claim cannot be decided")

    async def release(self, key: str) -> None:
        await self._local_claims.release(key)
        if self._health.available():
            try:
                await self._redis.delete(f"{self._prefix}claim:{key}")
            except REDIS_ERRORS as exc:  # it expires on its own; nothing is lost
                self._health.failed("release", exc)
            else:
                self._health.succeeded()

    async def health(self) -> dict[str, Any]:
        """Pings Redis; see :func:`app.adapters.redis_support.pinged_health` (plus ``claimFailure``)."""
        return await pinged_health(self._redis, self._health, claimFailure=self._claim_failure)
