"""Cleanup that a cancellation cannot cut short.

A rollback or a release interrupted half-way leaves a connection leased or a write lock held for good,
and the instance wedges. :func:`run_uninterrupted` runs such a step to its end on a task of its own; a
cancellation of the caller meanwhile is held back and raised once the step is done, so the caller still
unwinds as it was told to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

__all__ = ["run_uninterrupted"]

T = TypeVar("T")
log = structlog.get_logger(__name__)


async def run_uninterrupted(step: Awaitable[T], on_abandoned: Callable[[T], Awaitable[object]] | None = None) -> T:
    """Await ``step`` to its end even if the caller is cancelled meanwhile; then re-raise that cancellation
    (the step's own result or error is then dropped: the caller is gone).

    ``on_abandoned``: what to do with a result nobody will receive, e.g. close a connection the step
    opened; it runs (uninterrupted too) before the cancellation is re-raised. Without it, such a result
    (an open connection and its thread) would leak, and keep the process from exiting."""
    task = asyncio.ensure_future(step)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            # ``wait`` never cancels the task it waits for, and raises only the caller's cancellation.
            await asyncio.wait([task])
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if task.cancelled():
            raise cancelled
        if task.exception() is not None:
            log.warning("cleanup failed while its caller was cancelled", error_type=type(task.exception()).__name__)
        elif on_abandoned is not None:
            try:
                await run_uninterrupted(on_abandoned(task.result()))
            except Exception as exc:  # noqa: BLE001 - the caller's cancellation is what must come out
                log.warning("abandoned result could not be cleaned up", error_type=type(exc).__name__)
            except asyncio.CancelledError:
                pass  # cancelled once more meanwhile: the first cancellation is raised below all the same
        raise cancelled
    return task.result()
