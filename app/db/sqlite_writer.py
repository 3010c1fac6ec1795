"""The one connection this process writes SQLite through.

SQLite has one write lock per database file. Writers that each take it from their own connection queue
on the busy timeout (and a cancelled ``BEGIN IMMEDIATE`` that later succeeds keeps it for good); here
every write of the process, whether a transaction or a single statement, waits for this one connection
instead, in arrival order. The line is bounded: past ``max_pending`` waiting writes, or after waiting
``acquire_timeout`` seconds, a write is refused at once with ``DatabaseUnavailable``. The connection's
busy timeout is the BEGIN timeout, so a lock held by another process answers ``UNAVAILABLE`` in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import structlog

from app.db.errors import DatabaseUnavailable, is_database_outage, unavailable_from
from app.db.uninterrupted import run_uninterrupted

__all__ = ["SQLiteWriter", "fetch_all"]

log = structlog.get_logger(__name__)

_CLOSE_TIMEOUT_SECONDS = 5.0


class SQLiteWriter:
    """One connection, one holder at a time, first come first served (a :class:`ConnectionSource`)."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[aiosqlite.Connection]],
        *,
        acquire_timeout: float,
        begin_timeout: float,
        max_pending: int,
        retry_after: int,
    ) -> None:
        self._connect = connect
        self.acquire_timeout = acquire_timeout
        self.begin_timeout = begin_timeout
        self.max_pending = max_pending
        self.retry_after = retry_after
        self._connection: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # wakes its waiters in arrival order
        self._waiting: dict[object, float] = {}  # ticket -> when it joined the line (loop time)
        self._held_since: float | None = None

    # -- what readiness and load shedding look at --------------------------------------------------------

    @property
    def pending(self) -> int:
        """Writes waiting for the connection plus the one holding it."""
        return len(self._waiting) + (self._held_since is not None)

    @property
    def is_idle(self) -> bool:
        """Nobody holds the connection or waits for it."""
        return self.pending == 0 and not self._lock.locked()

    def oldest_pending_seconds(self) -> float:
        """How long the oldest write in line (or holding the connection) has been there; 0 when none."""
        now = asyncio.get_running_loop().time()
        since = [*self._waiting.values(), *([self._held_since] if self._held_since is not None else [])]
        return now - min(since) if since else 0.0

    # -- ConnectionSource ----------------------------------------------------------------------------------

    async def acquire(self) -> aiosqlite.Connection:
        """The connection, once every write that arrived earlier is done with it."""
        if self.pending >= self.max_pending:
            raise DatabaseUnavailable("Too many writes are waiting; try again shortly.", retry_after=self.retry_after)
        ticket = object()
        self._waiting[ticket] = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.acquire_timeout):
                await self._lock.acquire()
        except TimeoutError as exc:
            raise unavailable_from(exc, self.retry_after, "The database is busy") from exc
        finally:
            del self._waiting[ticket]
        self._held_since = asyncio.get_running_loop().time()
        try:
            if self._connection is None:
                # A caller cancelled meanwhile gets no connection: close it (its thread would otherwise
                # keep running, unreferenced, and hold the process open at exit).
                self._connection = await run_uninterrupted(self._connect(), on_abandoned=_close_quietly)
        except BaseException as exc:
            self._unlock()
            if isinstance(exc, Exception) and is_database_outage(exc):
                raise unavailable_from(exc, self.retry_after, "The database is unavailable") from exc
            raise
        return self._connection

    async def begin(self, connection: aiosqlite.Connection) -> None:
        await _execute(connection, "BEGIN IMMEDIATE")

    async def commit(self, connection: aiosqlite.Connection) -> None:
        await _execute(connection, "COMMIT")

    async def rollback(self, connection: aiosqlite.Connection) -> None:
        # Queued on the connection's thread behind any statement still in flight (a cancelled BEGIN or
        # INSERT runs to its end there), so it undoes that too. Nothing to undo is fine.
        try:
            await _execute(connection, "ROLLBACK")
        except sqlite3.OperationalError as exc:
            if "no transaction is active" not in str(exc):
                raise

    async def release(self, connection: aiosqlite.Connection, *, discard: bool) -> None:
        try:
            if discard or connection is not self._connection:
                if connection is self._connection:
                    self._connection = None  # the next holder opens a fresh one
                await _close_quietly(connection)
        finally:
            self._unlock()

    # -- single statements and lifecycle -------------------------------------------------------------------

    async def execute(self, query: str, args: list[Any]) -> list[Any]:
        """One statement in autocommit mode, in line with the transactions; it runs to its end even if the
        caller is cancelled, and only then does the next write get the connection."""
        connection = await self.acquire()
        discard = False
        try:
            return await run_uninterrupted(fetch_all(connection, query, args))
        except Exception as exc:
            # A plain statement error (a constraint, a syntax error) leaves the connection fine; anything
            # else (closed under us: ``ValueError: no active connection``, I/O, a lost file) replaces it,
            # or every later single-statement write would fail the same way.
            discard = not _still_usable(exc)
            if is_database_outage(exc):
                raise unavailable_from(exc, self.retry_after) from exc
            raise
        finally:
            await run_uninterrupted(self.release(connection, discard=discard))

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Let the holder and the line finish (up to ``grace_seconds``), then close the connection; the
        next write opens a new one (with the engine's path as it is then)."""
        got_it = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                await self._lock.acquire()
                got_it = True
        connection, self._connection = self._connection, None
        try:
            if connection is not None:
                await _close_quietly(connection)
        finally:
            if got_it:
                self._lock.release()

    def _unlock(self) -> None:
        self._held_since = None
        self._lock.release()


async def _execute(connection: aiosqlite.Connection, sql: str) -> None:
    # One trip to the connection's thread: BEGIN, COMMIT and ROLLBACK return no rows, and their cursor
    # needs no close of its own (closing it would be a second trip per statement).
    await connection.execute(sql)


async def fetch_all(connection: aiosqlite.Connection, query: str, args: list[Any]) -> list[Any]:
    """Run ``query`` and read every row, closing its cursor (which ends the statement) before returning."""
    async with connection.execute(query, args) as cursor:
        return list(await cursor.fetchall())


def _still_usable(exc: BaseException) -> bool:
    """Whether the connection can serve the next write after ``exc``: yes after a statement's own error
    (a constraint, a syntax error, a busy or locked answer); no after I/O errors, a missing or damaged
    file, or a connection that is closed or broken (then often not an ``sqlite3.Error`` at all)."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError):
        return not any(sign in text for sign in _BROKEN)
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
        return True
    return isinstance(exc, sqlite3.ProgrammingError) and "closed" not in text


_BROKEN = ("disk i/o", "unable to open", "malformed", "not a database", "readonly database")


async def _close_quietly(connection: aiosqlite.Connection) -> None:
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_SECONDS):
            await connection.close()
    except Exception as exc:  # noqa: BLE001 - a connection being thrown away may fail to close
        log.warning("discarded SQLite connection did not close cleanly", error_type=type(exc).__name__)
