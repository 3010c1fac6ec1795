"""Admission control maths: how long a newcomer would wait, and whether to take it.

Pure: callers pass the times they measured; nothing here reads a clock.

The estimate is Little's law (L = λW, J. D. C. Little, "A proof for the queuing formula L = λW",
Operations Research 9(3), 1961) applied to the waiting line of a gate that runs at most ``C`` jobs at
once. While every slot is busy, jobs leave at the rate λ = C / S, where S is the mean service time
(an exponentially weighted moving average of recent completed jobs). A newcomer with ``n`` jobs queued
ahead of it needs ``n + 1`` departures before a slot is its own, so it waits about

    W = (n + 1) / λ = (n + 1) × S / C.

While a slot is free nobody waits (W = 0). The ``+ 1`` (the newcomer's own departure) keeps the
estimate honest when ``C`` is small: with one slot busy on a 3 s job, a newcomer does wait.
"""

from __future__ import annotations

import math

from msgspec import Struct

__all__ = ["AdmissionDecision", "ServiceTime", "decide", "expected_wait", "observe", "retry_after_seconds"]


class ServiceTime(Struct, frozen=True):
    """Exponentially weighted moving average of completed jobs' service times (seconds)."""

    mean: float | None = None
    """``None`` until the first job completes."""
    samples: int = 0
    """Completed jobs seen (the first one seeds the mean)."""


class AdmissionDecision(Struct, frozen=True):
    """Whether to take a newcomer, its expected wait (seconds) and, when refused, when to come back."""

    admit: bool
    expected_wait: float
    retry_after: int | None = None


def observe(previous: ServiceTime, seconds: float, alpha: float) -> ServiceTime:
    """Fold one completed job's service time into the average: ``mean ← α·x + (1 − α)·mean``.

    ``alpha`` in (0, 1]: the weight of the newest sample (1 = only the last job counts). The first
    sample is taken as the mean, so the estimate is not dragged towards an arbitrary zero start.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError("alpha must be in (0, 1]")
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError("a service time is a finite, non-negative number of seconds")
    if previous.mean is None:
        return ServiceTime(seconds, 1)
    return ServiceTime(alpha * seconds + (1.0 - alpha) * previous.mean, previous.samples + 1)


def expected_wait(queued_ahead: int, in_flight: int, concurrency: int, mean_service: float | None) -> float:
    """Seconds a newcomer would wait for a slot: 0 while one is free, else ``(n + 1) × S / C``.

    Without any completed job yet (``mean_service`` is ``None``) there is nothing to estimate from:
    the wait reads as 0, and the gate's hard bound on its queue is what protects it then.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if queued_ahead < 0 or in_flight < 0:
        raise ValueError("counts cannot be negative")
    if in_flight < concurrency and queued_ahead == 0:
        return 0.0
    if mean_service is None:
        return 0.0
    return (queued_ahead + 1) * mean_service / concurrency


def retry_after_seconds(wait: float) -> int:
    """Whole seconds before a refused client should try again: when the work queued now should have
    drained (the expected wait, rounded up), and at least 1 s so clients never spin."""
    return max(1, math.ceil(wait)) if math.isfinite(wait) else 1


def decide(
    queued_ahead: int, in_flight: int, concurrency: int, mean_service: float | None, budget: float
) -> AdmissionDecision:
    """Admit when the expected wait is within ``budget`` seconds; otherwise refuse with a Retry-After."""
    wait = expected_wait(queued_ahead, in_flight, concurrency, mean_service)
    if wait <= budget:
        return AdmissionDecision(True, wait)
    return AdmissionDecision(False, wait, retry_after_seconds(wait))
