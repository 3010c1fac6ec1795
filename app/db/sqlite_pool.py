"""Piccolo's SQLite engine with a small pool of open connections.

Stock Piccolo opens a new aiosqlite connection (a new thread plus a ``PRAGMA`` round trip) for every
query outside a transaction; under load that costs more than the queries. This engine keeps up to
``pool_size`` connections open, sets the pragmas once per connection, and hands transactions a lease
whose ``close()`` returns the connection to the pool.
"""

from __future__ import annotations

import asyncio
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
        self._slots: asyncio.Semaphore | None = None

    async def _open(self) -> aiosqlite.Connection:
        connection = await aiosqlite.connect(**self.connection_kwargs)
        connection.row_factory = dict_factory  # type: ignore[assignment]
        await connection.execute("PRAGMA foreign_keys = 1")
        await connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        return connection

    async def acquire(self) -> aiosqlite.Connection:
        """An open connection, waiting while all ``pool_size`` are in use."""
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
        try:
            if connection.in_transaction:
                await connection.rollback()
            self._idle.append(connection)
        except Exception:  # noqa: BLE001 - a broken connection is dropped, not reused
            await connection.close()
        finally:
            assert self._slots is not None
            self._slots.release()

    async def close_pool(self) -> None:
        """Close every idle connection (call when no query is running)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()

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
