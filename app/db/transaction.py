"""A write transaction that owns its connection end to end, on SQLite and on PostgreSQL.

Acquire (bounded by the source's acquire timeout), BEGIN (bounded by ``begin_timeout``), commit or roll
back, release in ``finally``. The steps after the block (and the clean-up of a BEGIN that failed, timed
out or was cancelled mid-flight) run to their end whatever happens to the caller, so a cancelled request
can never leave a connection leased or a lock held. A connection whose rollback fails (lost, broken) is
discarded, never reused, and its slot is freed all the same.

Piccolo runs the queries of the block on ``connection``: this object is the engine's
``current_transaction`` while the block runs, and Piccolo reads only ``.connection`` from it. A
transaction opened while another is current joins it, as Piccolo's own do.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Protocol

import structlog

from app.db.errors import is_database_outage, unavailable_from
from app.db.uninterrupted import run_uninterrupted

__all__ = ["ConnectionSource", "OwnedTransaction"]

log = structlog.get_logger(__name__)


class ConnectionSource(Protocol):
    """Where a transaction's connection comes from and how it is driven (the SQLite writer, an asyncpg pool)."""

    begin_timeout: float
    """Longest wait for BEGIN; then ``DatabaseUnavailable``."""
    retry_after: int
    """``Retry-After`` of the ``DatabaseUnavailable`` this source raises."""

    async def acquire(self) -> Any:
        """A connection for one transaction; ``DatabaseUnavailable`` on timeout, overload or outage.
        Cancellation-safe: a cancelled acquire holds nothing."""

    async def begin(self, connection: Any) -> None: ...

    async def commit(self, connection: Any) -> None: ...

    async def rollback(self, connection: Any) -> None:
        """Bring ``connection`` out of any transaction (behind a statement still in flight, if any); raise
        when that cannot be done, and the connection is then discarded."""

    async def release(self, connection: Any, *, discard: bool) -> None:
        """Give ``connection`` back (``discard``: close it instead of reusing it) and free its slot. Never raises."""


class OwnedTransaction:
    """``async with OwnedTransaction(engine, source) as transaction:`` one write transaction."""

    __slots__ = ("_parent", "_source", "_token", "connection", "engine")

    def __init__(self, engine: Any, source: ConnectionSource) -> None:
        self.engine = engine
        self._source = source
        self._parent: Any = None
        self._token: Any = None
        self.connection: Any = None

    async def __aenter__(self) -> Any:
        parent = self.engine.current_transaction.get()
        if parent is not None:
            self._parent = parent
            return parent
        self.connection = await self._open()
        self._token = self.engine.current_transaction.set(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._parent is not None:
            return False
        try:
            await run_uninterrupted(self._finish(commit=exc_type is None))
        finally:
            self._forget()
        return False

    async def _open(self) -> Any:
        source = self._source
        connection = await source.acquire()
        try:
            async with asyncio.timeout(source.begin_timeout):
                await source.begin(connection)
        except BaseException as exc:
            # The BEGIN may still be running (aiosqlite's thread carries on when its awaiter is cancelled,
            # and a BEGIN IMMEDIATE that then gets the lock would keep it): roll back behind it, release.
            await run_uninterrupted(self._abandon(connection))
            if isinstance(exc, Exception) and is_database_outage(exc):
                raise unavailable_from(exc, source.retry_after) from exc
            raise
        return connection

    async def _abandon(self, connection: Any) -> None:
        discard = False
        try:
            await self._source.rollback(connection)
        except Exception as exc:  # noqa: BLE001 - a connection that cannot roll back is not reused
            discard = True
            log.warning("rollback after a failed BEGIN failed; connection discarded", error_type=type(exc).__name__)
        await self._source.release(connection, discard=discard)

    async def _finish(self, *, commit: bool) -> None:
        source, connection = self._source, self.connection
        failure: Exception | None = None
        discard = False
        try:
            if commit:
                try:
                    await source.commit(connection)
                except Exception as exc:  # noqa: BLE001 - rolled back below, then raised
                    failure = exc
            if not commit or failure is not None:
                try:
                    await source.rollback(connection)
                except Exception as exc:  # noqa: BLE001 - a lost or broken connection is not reused
                    discard = True
                    log.warning("rollback failed; connection discarded", error_type=type(exc).__name__)
        finally:
            await source.release(connection, discard=discard)
            self.connection = None
        if failure is not None:
            if is_database_outage(failure):
                raise unavailable_from(failure, source.retry_after) from failure
            raise failure

    def _forget(self) -> None:
        try:
            self.engine.current_transaction.reset(self._token)
        except ValueError:  # left from another context than it was entered in: forget it all the same
            self.engine.current_transaction.set(None)
