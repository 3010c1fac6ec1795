"""Piccolo's SQLite engine with a small pool of open reader connections and one writer.

Stock Piccolo opens a new aiosqlite connection (a new thread plus a ``PRAGMA`` round trip) for every
query outside a transaction; under load that costs more than the queries. This engine keeps up to
``pool_size`` connections open for reads (WAL mode, so they run beside the writer) and sets the pragmas
once per connection.

Every write goes through the :class:`~app.db.sqlite_writer.SQLiteWriter`: transactions
(:meth:`PooledSQLiteEngine.transaction`, which Piccolo's ``atomic`` and migrations use too) and single
statements outside a transaction (any statement that is not a ``SELECT``). With ``readers_query_only``
the pool's connections refuse writes outright (``PRAGMA query_only``), so nothing can take the write lock
behind the writer's back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiosqlite
from piccolo.engine.sqlite import SQLiteEngine, TransactionType, dict_factory

from app.db.errors import DatabaseUnavailable, is_database_outage, unavailable_from
from app.db.sqlite_writer import SQLiteWriter, fetch_all
from app.db.transaction import OwnedTransaction
from app.db.uninterrupted import run_uninterrupted

__all__ = ["PooledSQLiteEngine", "is_read_statement"]

_READ_STATEMENTS = frozenset({"SELECT", "VALUES", "EXPLAIN"})


def is_read_statement(query: str) -> bool:
    """Whether ``query`` only reads (so a pooled reader may run it); anything else goes to the writer.
    ``WITH`` counts as a write: a common table expression may front an ``INSERT``."""
    head = query.lstrip(" \t\r\n(").split(None, 1)
    return bool(head) and head[0].upper() in _READ_STATEMENTS


class _Lease:
    """A pooled connection as Piccolo sees it (``batch``): everything delegates, ``close`` releases."""

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
    """SQLite engine reusing up to ``pool_size`` reader connections, writing through one writer."""

    def __init__(
        self,
        path: str,
        pool_size: int,
        timeout: float,
        synchronous: str = "FULL",
        *,
        acquire_timeout: float = 30.0,
        begin_timeout: float | None = None,
        max_pending_writes: int = 1024,
        retry_after: int = 1,
        readers_query_only: bool = False,
    ) -> None:
        """``timeout``: the readers' busy timeout; the writer's is ``begin_timeout`` (default: the same),
        so a write lock held by another process answers ``DatabaseUnavailable`` after that long."""
        super().__init__(path=path, timeout=timeout, log_queries=False)
        self._pool_size = pool_size
        self._synchronous = synchronous
        self._acquire_timeout = acquire_timeout
        self._retry_after = retry_after
        self._readers_query_only = readers_query_only
        self._idle: list[aiosqlite.Connection] = []
        self._connections: set[aiosqlite.Connection] = set()  # every open reader, idle or leased
        self._slots: asyncio.Semaphore | None = None
        self._closed = False
        self.writer = SQLiteWriter(
            self._connect_writer,
            acquire_timeout=acquire_timeout,
            begin_timeout=timeout if begin_timeout is None else begin_timeout,
            max_pending=max_pending_writes,
            retry_after=retry_after,
        )

    # -- connections --------------------------------------------------------------------------------------

    async def _connect(self, *, query_only: bool = False, **overrides: Any) -> aiosqlite.Connection:
        connection = await aiosqlite.connect(**{**self.connection_kwargs, **overrides})
        try:
            connection.row_factory = dict_factory  # type: ignore[assignment]
            await connection.execute("PRAGMA foreign_keys = 1")
            await connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            if query_only:
                await connection.execute("PRAGMA query_only = 1")
        except BaseException:
            await connection.close()
            raise
        return connection

    async def _connect_writer(self) -> aiosqlite.Connection:
        return await self._connect(timeout=self.writer.begin_timeout)

    async def _open(self) -> aiosqlite.Connection:
        connection = await self._connect(query_only=self._readers_query_only)
        self._connections.add(connection)
        return connection

    @property
    def free_reader_slots(self) -> int:
        """Reader leases that could be taken now without waiting (diagnostics and tests)."""
        return self._pool_size if self._slots is None else self._slots._value

    async def acquire(self) -> aiosqlite.Connection:
        """An open reader connection, waiting (at most the acquire timeout) while all ``pool_size`` are in use."""
        if self._closed:
            raise RuntimeError("the SQLite pool is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._pool_size)
        try:
            async with asyncio.timeout(self._acquire_timeout):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise unavailable_from(exc, self._retry_after) from exc
        try:
            return self._idle.pop() if self._idle else await self._open()
        except BaseException as exc:
            self._slots.release()
            if isinstance(exc, Exception) and is_database_outage(exc):
                raise unavailable_from(exc, self._retry_after, "The database is unavailable") from exc
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
        """Refuse new leases, give leased connections (and the writer's holder) ``grace_seconds`` to come
        back, then close every connection, leased or not. A lease returned after that is closed, not pooled."""
        self._closed = True
        if self._slots is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_seconds):
                    for _ in range(self._pool_size):
                        await self._slots.acquire()
        self._idle = []
        for connection in list(self._connections):
            await self._close(connection)
        await self.writer.close(grace_seconds)
        # Closed and empty: a later query opens the pool afresh (e.g. after the database comes back).
        self._slots, self._closed = None, False

    async def get_connection(self) -> Any:
        return _Lease(await self.acquire(), self)

    # -- Piccolo's entry points ------------------------------------------------------------------------------

    def transaction(  # type: ignore[override]
        self, transaction_type: TransactionType = TransactionType.immediate, allow_nested: bool = True
    ) -> OwnedTransaction:
        """A write transaction on the writer (``BEGIN IMMEDIATE``, whatever ``transaction_type`` says:
        the writer is the only connection that writes)."""
        return OwnedTransaction(self, self.writer)

    async def _run_in_new_connection(
        self, query: str, args: list[Any] | None = None, query_type: str = "generic", table: Any = None
    ) -> Any:
        if not is_read_statement(query):
            return await self.writer.execute(query, args or [])
        connection = await self.acquire()
        try:
            # To its end even if the caller is cancelled: a statement started on the connection's thread
            # and never finished keeps a WAL read snapshot open, and the pooled connection would go on
            # reading the database as it was then (rows committed since would read as missing).
            return await run_uninterrupted(fetch_all(connection, query, args or []))
        except Exception as exc:
            if is_database_outage(exc) and not isinstance(exc, DatabaseUnavailable):
                raise unavailable_from(exc, self._retry_after, "The database is unavailable") from exc
            raise
        finally:
            await run_uninterrupted(self.release(connection))

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
