"""Piccolo's SQLite engine with a small pool of open connections.

Stock Piccolo opens a new aiosqlite connection (a new thread plus a ``PRAGMA`` round trip) for every
query outside a transaction; under load that costs more than the queries. This engine keeps up to
``pool_size`` connections open, sets the pragmas once per connection, and hands transactions a lease
whose ``close()`` returns the connection to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiosqlite
from piccolo.engine.sqlite import SQLiteEngine, dict_factory

__all__ = ["PooledSQLiteEngine"]


class _Lease:
    """A pooled connection as Piccolo's transaction sees it: everything delegates, ``close`` releases."""

    __slots__ = ("_connection", "_engine")

    def __init__(self, connection: aiosqlite.Connection, engine: PooledSQLiteEngine) -> None:
        object.__setattr__(self, "_connection", connection)
        object.__setattr__(self, "_engine", engine)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._connection, name, value)

    async def close(self) -> None:
        await self._engine.release(self._connection)


class PooledSQLiteEngine(SQLiteEngine):
    """SQLite engine reusing up to ``pool_size`` connections (WAL mode, so readers run beside the writer)."""

    def __init__(self, path: str, pool_size: int, timeout: float, synchronous: str = "FULL") -> None:
        super().__init__(path=path, timeout=timeout, log_queries=False)
        self._pool_size = pool_size
        self._synchronous = synchronous
        self._idle: list[aiosqlite.Connection] = []
        self._connections: set[aiosqlite.Connection] = set()  # every open one, idle or leased
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    async def _open(self) -> aiosqlite.Connection:
        connection = await aiosqlite.connect(**self.connection_kwargs)
        self._connections.add(connection)
        connection.row_factory = dict_factory  # type: ignore[assignment]
        await connection.execute("PRAGMA foreign_keys = 1")
        await connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        return connection

    async def acquire(self) -> aiosqlite.Connection:
        """An open connection, waiting while all ``pool_size`` are in use."""
        if self._closed:
            raise RuntimeError("the SQLite pool is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._pool_size)
        await self._slots.acquire()
        try:
            return self._idle.pop() if self._idle else await self._open()
        except BaseException:
            self._slots.release()
            raise

    async def release(self, connection: aiosqlite.Connection) -> None:
        """Return ``connection``; one left inside a transaction (an interrupted caller) is rolled back."""
        if connection not in self._connections:
            return  # force-closed by close_pool while leased; its slot went with the old pool
        try:
            if connection.in_transaction:
                await connection.rollback()
            if self._closed:
                await self._close(connection)
            else:
                self._idle.append(connection)
        except Exception:  # noqa: BLE001 - a broken connection is dropped, not reused
            await self._close(connection)
        finally:
            assert self._slots is not None
            self._slots.release()

    async def _close(self, connection: aiosqlite.Connection) -> None:
        self._connections.discard(connection)
        await connection.close()

    async def close_pool(self, grace_seconds: float = 5.0) -> None:
        """Refuse new leases, give leased connections ``grace_seconds`` to come back (a query finishing,
        a cancelled transaction rolling back), then close every connection, leased or not. A lease
        returned after that is closed, not pooled."""
        self._closed = True
        if self._slots is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_seconds):
                    for _ in range(self._pool_size):
                        await self._slots.acquire()
        self._idle = []
        for connection in list(self._connections):
            await self._close(connection)
        # Closed and empty: a later query opens the pool afresh (e.g. after the database comes back).
        self._slots, self._closed = None, False

    async def get_connection(self) -> Any:
        return _Lease(await self.acquire(), self)

    async def _run_in_new_connection(
        self, query: str, args: list[Any] | None = None, query_type: str = "generic", table: Any = None
    ) -> Any:
        connection = await self.acquire()
        try:
            async with connection.execute(query, args or []) as cursor:
                return await cursor.fetchall()
        finally:
            await self.release(connection)

    async def _run_in_existing_connection(
        self,
        connection: Any,
        query: str,
        args: list[Any] | None = None,
        query_type: str = "generic",
        table: Any = None,
    ) -> Any:
        async with connection.execute(query, args or []) as cursor:
            return await cursor.fetchall()
