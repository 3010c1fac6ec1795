"""A consecutive-failure circuit breaker: a small, synchronous state machine with an injectable clock.

Hand-written because the maintained Python breakers either read the wall clock directly (no way to
test without sleeping) or let every caller through while half-open; this one lets exactly one probe
through. It does no I/O and never awaits, so on one event loop it needs no lock.

States:

* ``closed``: calls go through; ``failure_threshold`` consecutive failures open the circuit.
* ``open``: calls are refused until ``reset_seconds`` have passed since it opened.
* ``half_open``: the first caller gets the probe; others are refused while it is out. A successful
  probe closes the circuit, a failed one re-opens it for another ``reset_seconds``.

Usage: ``if breaker.try_acquire(): ...`` then exactly one of :meth:`~CircuitBreaker.record_success`,
:meth:`~CircuitBreaker.record_failure` or :meth:`~CircuitBreaker.release` (the call ended with no verdict,
e.g. it was cancelled).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["CircuitBreaker", "CircuitState"]


class CircuitState(StrEnum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures, for ``reset_seconds``.

    ``clock`` returns seconds from any fixed origin (``time.monotonic`` by default).
    """

    def __init__(
        self, failure_threshold: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_seconds <= 0:
            raise ValueError("reset_seconds must be positive")
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_out = False

    @property
    def state(self) -> CircuitState:
        """The current state (``open`` turns into ``half_open`` by itself once the reset time is up)."""
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._clock() - self._opened_at >= self.reset_seconds:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    @property
    def consecutive_failures(self) -> int:
        """Failures counted since the last success (reset when the circuit opens)."""
        return self._failures

    def retry_after(self) -> float:
        """Seconds until an open circuit lets a probe through; 0 when not open."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_seconds - self._clock())

    def try_acquire(self) -> bool:
        """Ask to make one call: ``True`` when it may go ahead (then report how it went)."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def record_success(self) -> None:
        """A permitted call succeeded: the circuit closes and the failure count restarts."""
        self._failures = 0
        self._opened_at = None
        self._probe_out = False

    def record_failure(self) -> None:
        """A permitted call failed: count it, opening the circuit at the threshold.

        A failure while the circuit is not closed (the probe, or a call let through before it opened)
        re-opens it for a full ``reset_seconds``.
        """
        if self._opened_at is not None:
            self._open()
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open()

    def release(self) -> None:
        """A permitted call ended without a verdict (cancelled): frees the probe slot, counts nothing."""
        self._probe_out = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._probe_out = False
