"""Piccolo's PostgreSQL engine with transactions that own their pooled connection.

Piccolo's own transaction gives its connection back to the asyncpg pool only after a successful COMMIT or
ROLLBACK: a rollback that fails (the connection lost mid-transaction) leaks the pool slot, and after
``pool_max_size`` such outages every transaction waits forever. Here :class:`OwnedTransaction` drives
the connection, a failed rollback terminates it, and the slot is released in every case; acquiring
waits at most the acquire timeout and answers ``DatabaseUnavailable`` after that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from piccolo.engine.postgres import PostgresEngine

from app.db.errors import DatabaseUnavailable, is_database_outage, unavailable_from
from app.db.transaction import OwnedTransaction

__all__ = ["OwnedPostgresEngine", "PostgresPoolSource"]

log = structlog.get_logger(__name__)


class PostgresPoolSource:
    """Transactions' connections from the engine's asyncpg pool (a :class:`ConnectionSource`)."""

    def __init__(
        self, engine: PostgresEngine, *, acquire_timeout: float, begin_timeout: float, retry_after: int
    ) -> None:
        self._engine = engine
        self.acquire_timeout = acquire_timeout
        self.begin_timeout = begin_timeout
        self.retry_after = retry_after

    async def acquire(self) -> Any:
        pool = self._engine.pool
        if pool is None:
            raise DatabaseUnavailable("The database is unavailable; try again shortly.", retry_after=self.retry_after)
        try:
            return await pool.acquire(timeout=self.acquire_timeout)
        except Exception as exc:
            if is_database_outage(exc):
                raise unavailable_from(exc, self.retry_after) from exc
            raise

    async def begin(self, connection: Any) -> None:
        await connection.execute("BEGIN")

    async def commit(self, connection: Any) -> None:
        await connection.execute("COMMIT")

    async def rollback(self, connection: Any) -> None:
        if connection.is_closed():
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
        # Bounded: a ROLLBACK into a dead network would otherwise hold the slot until TCP gives up.
        async with asyncio.timeout(self.begin_timeout):
            await connection.execute("ROLLBACK")

    async def release(self, connection: Any, *, discard: bool) -> None:
        try:
            if discard:
                connection.terminate()
            pool = self._engine.pool
            if pool is None:
                connection.terminate()  # the pool it came from is closed
                return
            await pool.release(connection, timeout=self.begin_timeout)
        except Exception as exc:  # noqa: BLE001 - asyncpg terminates a connection it cannot reset and frees its slot
            log.warning("connection release failed; connection terminated", error_type=type(exc).__name__)
            connection.terminate()


class OwnedPostgresEngine(PostgresEngine):
    """``PostgresEngine`` whose transactions own their connection and whose pool waits are bounded."""

    def __init__(
        self, config: dict[str, Any], *, acquire_timeout: float, begin_timeout: float, retry_after: int
    ) -> None:
        super().__init__(config=config, log_queries=False)
        self.source = PostgresPoolSource(
            self, acquire_timeout=acquire_timeout, begin_timeout=begin_timeout, retry_after=retry_after
        )

    def transaction(self, allow_nested: bool = True) -> OwnedTransaction:  # type: ignore[override]
        return OwnedTransaction(self, self.source)

    async def _run_in_pool(self, query: str, args: Sequence[Any] | None = None) -> Any:
        connection = await self.source.acquire()
        try:
            return await connection.fetch(query, *(args or []))
        except Exception as exc:
            if is_database_outage(exc):
                raise unavailable_from(exc, self.source.retry_after, "The database is unavailable") from exc
            raise
        finally:
            await self.source.release(connection, discard=False)
