"""Admission control: a per-operation gate that bounds work in flight and refuses, at once, a newcomer
whose expected wait is over budget (``UNAVAILABLE`` with Retry-After) instead of letting every request
slow down together.

Applied around the create and submit use cases where :func:`app.services.container.open_services`
builds them (:class:`Admitted`), so each edge (REST, GraphQL over HTTP and WebSocket) is covered once.
A use case's cheap refusals (its ``precheck``: signature, rate limits, self-target) run before the
gate: a flood of requests refused there (one client over its rate limit) never holds a slot or a place
in line, so it cannot make the gate refuse everyone else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, runtime_checkable

import structlog
from msgspec import Struct

from app.domain.admission import ServiceTime, decide, observe, retry_after_seconds
from app.errors import ErrorCode, ServiceError
from app.settings import AdmissionSettings

__all__ = ["AdmissionGate", "AdmissionState", "Admitted", "PrecheckedUseCase"]

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class AdmissionState(Struct, frozen=True):
    """A snapshot of one gate, for health details and tests."""

    operation: str
    in_flight: int
    queued: int
    concurrency: int
    mean_service_seconds: float | None
    expected_wait_seconds: float
    refused: int
    """Every refusal, at once or (below) after waiting out the budget."""
    overdue: int
    """Waiters that reached the budget still in line (the estimate was too low) and were refused then."""


class AdmissionGate:
    """At most ``concurrency`` holders of :meth:`admit` at once; the rest wait first come, first served.

    A newcomer is refused at once when its expected wait (:func:`app.domain.admission.expected_wait`)
    exceeds ``max_wait_seconds`` or the line already holds ``max_queued``; a waiter still in line when
    its wait reaches ``max_wait_seconds`` is refused then (the estimate was wrong). A waiter that is cancelled
    (client gone) leaves the line; a slot handed to it in the same instant is passed on. Every admission
    that completes, returning or raising, feeds the service-time average with how long it held its slot
    (that is what the next in line waits for); a cancelled one (client gone) does not, having stopped at
    an arbitrary point.
    """

    def __init__(
        self,
        operation: str,
        *,
        concurrency: int,
        max_wait_seconds: float,
        max_queued: int,
        ewma_alpha: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1 or max_queued < 1:
            raise ValueError("concurrency and max_queued must be at least 1")
        self.operation = operation
        self._concurrency = concurrency
        self._budget = max_wait_seconds
        self._max_queued = max_queued
        self._alpha = ewma_alpha
        self._clock = clock
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._service = ServiceTime()
        self._refused = 0
        self._overdue = 0

    @classmethod
    def from_settings(cls, operation: str, settings: AdmissionSettings) -> AdmissionGate:
        return cls(
            operation,
            concurrency=settings.concurrency,
            max_wait_seconds=settings.max_wait_seconds,
            max_queued=settings.max_queued,
            ewma_alpha=settings.ewma_alpha,
        )

    def state(self) -> AdmissionState:
        decision = decide(len(self._waiters), self._in_flight, self._concurrency, self._service.mean, self._budget)
        return AdmissionState(
            self.operation,
            self._in_flight,
            len(self._waiters),
            self._concurrency,
            self._service.mean,
            decision.expected_wait,
            self._refused,
            self._overdue,
        )

    def _refuse(self, wait: float) -> ServiceError:
        self._refused += 1
        retry_after = retry_after_seconds(wait)
        # One line per refusal would flood the log exactly when the service is busiest.
        if self._refused % 100 == 1:
            log.warning(
                "admission refused",
                operation=self.operation,
                expected_wait_s=round(wait, 3),
                queued=len(self._waiters),
                in_flight=self._in_flight,
                refused_total=self._refused,
            )
        return ServiceError(ErrorCode.UNAVAILABLE, "The service is busy; try again shortly.", retryAfter=retry_after)

    async def _acquire(self) -> None:
        decision = decide(len(self._waiters), self._in_flight, self._concurrency, self._service.mean, self._budget)
        if not decision.admit:
            raise self._refuse(decision.expected_wait)
        if self._in_flight < self._concurrency and not self._waiters:
            self._in_flight += 1
            return
        if len(self._waiters) >= self._max_queued:
            raise self._refuse(decision.expected_wait)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            # _release hands over its slot (_in_flight already counts us). The deadline is a safety net
            # for a wrong estimate (service times grew after we were let in): a waiter never waits
            # much past the budget, it leaves the line with the same answer a newcomer would get.
            await asyncio.wait({waiter}, timeout=self._budget)
        except asyncio.CancelledError:
            self._leave(waiter)
            raise
        if not waiter.done():
            self._leave(waiter)
            self._overdue += 1
            raise self._refuse(self._budget)

    def _leave(self, waiter: asyncio.Future[None]) -> None:
        """Take ``waiter`` out of the line; a slot that reached it in the same instant is passed on."""
        if waiter.done() and not waiter.cancelled():
            self._release()
        else:
            self._waiters.remove(waiter)
            waiter.cancel()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the next in line; _in_flight is unchanged
                return
        self._in_flight -= 1

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one slot for the body; raise ``ServiceError(UNAVAILABLE, retryAfter=N)`` at once when
        the expected wait is over budget or the line is full."""
        await self._acquire()
        started = self._clock()
        try:
            yield
        except Exception:
            self._observe(started)
            raise
        finally:
            self._release()
        self._observe(started)

    def _observe(self, started: float) -> None:
        self._service = observe(self._service, max(0.0, self._clock() - started), self._alpha)


class PrecheckedUseCase(Protocol[P, R]):
    """A use case split in two: ``__call__`` is ``precheck`` then ``run``, with the same arguments."""

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    async def precheck(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """The cheap refusals (no scoring, no database): raise to refuse."""

    async def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """The rest of the work, once ``precheck`` has passed."""


class Admitted(Generic[P, R]):
    """A use case behind a gate: its ``precheck`` (when it has one) runs first, outside the gate; the
    rest runs only once :meth:`AdmissionGate.admit` lets it in. A use case without ``precheck`` runs
    whole inside the gate."""

    def __init__(self, use_case: Callable[P, Awaitable[R]] | PrecheckedUseCase[P, R], gate: AdmissionGate) -> None:
        self.use_case = use_case
        self.gate = gate

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        use_case = self.use_case
        if not isinstance(use_case, _Prechecked):
            async with self.gate.admit():
                return await use_case(*args, **kwargs)
        await use_case.precheck(*args, **kwargs)
        async with self.gate.admit():
            return await use_case.run(*args, **kwargs)


@runtime_checkable
class _Prechecked(Protocol):
    """What :class:`Admitted` looks for (``isinstance`` cannot take a generic protocol)."""

    def precheck(self, *args: Any, **kwargs: Any) -> Awaitable[None]: ...

    def run(self, *args: Any, **kwargs: Any) -> Awaitable[Any]: ...
