"""Bounded in-process task queue: a fixed pool of workers, refusal (not waiting) when full."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

import structlog

__all__ = ["QueueFull", "TaskQueue"]

T = TypeVar("T")


class QueueFull(Exception):
    """The queue is at capacity; the caller should answer UNAVAILABLE."""


class TaskQueue:
    """Runs submitted coroutine functions on ``workers`` tasks; at most ``max_size`` wait.

    Callers await the result with a timeout. A job whose caller gave up (timed out or was cancelled)
    before it started is skipped, so a burst of timeouts or disconnects does not leave work nobody
    will read.
    """

    def __init__(self, max_size: int, workers: int) -> None:
        if max_size < 1 or workers < 1:
            # asyncio.Queue(0) would be unbounded: every queue in the service has a bound.
            raise ValueError("a task queue needs max_size >= 1 and workers >= 1")
        self._queue: asyncio.Queue[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any], dict[str, Any]]] = (
            asyncio.Queue(max_size)
        )
        self._workers_count = workers
        self._workers: list[asyncio.Task[None]] = []
        self.max_size = max_size

    async def __aenter__(self) -> Self:
        self._workers = [asyncio.create_task(self._work(), name=f"task-queue-{i}") for i in range(self._workers_count)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            _, future, _ = self._queue.get_nowait()
            future.cancel()

    @property
    def depth(self) -> int:
        """Jobs waiting to start."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return bool(self._workers) and not all(t.done() for t in self._workers)

    async def run(self, job: Callable[[], Awaitable[T]], timeout: float) -> T:
        """Queue ``job`` and wait for its result. Raises :class:`QueueFull` at once when full and
        ``TimeoutError`` when the job has not finished within ``timeout`` seconds."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            # The job logs with the caller's request id although a worker task runs it.
            self._queue.put_nowait((job, future, structlog.contextvars.get_contextvars()))
        except asyncio.QueueFull:
            raise QueueFull from None
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except (TimeoutError, asyncio.CancelledError):
            future.cancel()  # nobody will read it: a worker that has not started it skips it
            raise

    async def _work(self) -> None:
        while True:
            job, future, log_context = await self._queue.get()
            try:
                if future.cancelled():
                    continue
                try:
                    with structlog.contextvars.bound_contextvars(**log_context):
                        result = await job()
                except asyncio.CancelledError:
                    future.cancel()  # the caller stops waiting either way
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # the queue is closing
                    # Otherwise the job itself was cancelled (e.g. it awaited a cancelled future):
                    # that ends the job, not the worker.
                except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                    if not future.done():
                        future.set_exception(exc)
                else:
                    if not future.done():
                        future.set_result(result)
            finally:
                self._queue.task_done()
