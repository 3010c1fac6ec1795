"""Cleanup that a cancellation cannot cut short.

A rollback or a release interrupted half-way leaves a connection leased or a write lock held for good
(the wedge of issue 10). :func:`run_uninterrupted` runs such a step to its end on a task of its own; a
cancellation of the caller meanwhile is held back and raised once the step is done, so the caller still
unwinds as it was told to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import structlog

__all__ = ["run_uninterrupted"]

T = TypeVar("T")
log = structlog.get_logger(__name__)


async def run_uninterrupted(step: Awaitable[T]) -> T:
    """Await ``step`` to its end even if the caller is cancelled meanwhile; then re-raise that cancellation
    (the step's own result or error is then dropped: the caller is gone)."""
    task = asyncio.ensure_future(step)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            # ``wait`` never cancels the task it waits for, and raises only the caller's cancellation.
            await asyncio.wait([task])
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("cleanup failed while its caller was cancelled", error_type=type(task.exception()).__name__)
        raise cancelled
    return task.result()
