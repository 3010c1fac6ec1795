"""Cancel a coroutine after exactly ``k`` event-loop steps, for every ``k`` until it completes.

A request can be cancelled at any ``await`` (a client closing its socket, a timeout). Testing one or two
hand-picked points misses the rest; this helper starts the coroutine as a task, lets the loop run ``k``
iterations (each ``asyncio.sleep(0)`` of the ticking caller is one), cancels the task, and waits for it
to unwind. :func:`cancel_at_every_step` repeats that for ``k = 0, 1, 2, ...`` until a run completes
before its cancellation: every point before completion has then been hit (with SQLite's and asyncpg's
I/O finishing on their own schedule, some points several times), and the caller checks its invariants
after each run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CancellationRun", "cancel_after_steps", "cancel_at_every_step"]


@dataclass(frozen=True)
class CancellationRun:
    """One run: cancelled after ``steps`` loop iterations, or completed before that."""

    steps: int
    completed: bool
    """The coroutine finished (result or error) before the cancellation was sent."""
    cancelled: bool
    """The coroutine ended with ``CancelledError`` (the cancellation reached it)."""
    result: Any = None
    error: BaseException | None = None
    """What it raised other than ``CancelledError`` (e.g. a typed refusal while unwinding)."""


async def cancel_after_steps(make: Callable[[], Awaitable[Any]], steps: int) -> CancellationRun:
    """Run ``make()`` as a task, cancel it after ``steps`` loop iterations (unless done), await its end."""

    async def body() -> Any:
        return await make()

    task = asyncio.ensure_future(body())
    for _ in range(steps):
        if task.done():
            break
        await asyncio.sleep(0)
    completed = task.done()
    if not completed:
        task.cancel()
    await asyncio.wait([task])
    if task.cancelled():
        return CancellationRun(steps, completed, cancelled=True)
    error = task.exception()
    return CancellationRun(steps, completed, cancelled=False, result=None if error else task.result(), error=error)


async def cancel_at_every_step(
    make: Callable[[], Awaitable[Any]],
    after_each: Callable[[CancellationRun], Awaitable[None]],
    *,
    max_steps: int = 5000,
) -> list[CancellationRun]:
    """:func:`cancel_after_steps` for ``k = 0, 1, ...`` until a run completes uncancelled; ``after_each``
    checks the invariants after every run (and may reset state for the next). Fails past ``max_steps``."""
    runs: list[CancellationRun] = []
    for steps in range(max_steps + 1):
        run = await cancel_after_steps(make, steps)
        runs.append(run)
        await after_each(run)
        if run.completed:
            return runs
    raise AssertionError(f"the coroutine did not complete within {max_steps} loop steps")
