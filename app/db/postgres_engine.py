"""Piccolo's PostgreSQL engine with transactions that own their pooled connection.

Piccolo's own transaction gives its connection back to the asyncpg pool only after a successful COMMIT or
ROLLBACK: a rollback that fails (the connection lost mid-transaction) leaks the pool slot, and after
``pool_max_size`` such outages every transaction waits forever. Here :class:`OwnedTransaction` drives
the connection, a failed rollback terminates it, and the slot is released in every case; acquiring
waits at most the acquire timeout and answers ``DatabaseUnavailable`` after that.

Every statement, COMMIT included, waits at most ``[database] statement_timeout_seconds`` for its answer
(asyncpg's ``command_timeout``, set in the pool's config by :func:`app.db.engine.engine_from_url`): on a
black-holed link nothing else would end the wait before TCP gives up, some 15 minutes, and the
transaction's clean-up cannot be cancelled, so the slot would be held all that time. A COMMIT that times
out leaves its outcome unknown: the connection is discarded and the caller gets ``DatabaseUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self,
        engine: PostgresEngine,
        *,
        acquire_timeout: float,
        begin_timeout: float,
        retry_after: int,
        statement_timeout: float = 30.0,
    ) -> None:
        self._engine = engine
        self.acquire_timeout = acquire_timeout
        self.begin_timeout = begin_timeout
        self.retry_after = retry_after
        self.statement_timeout = statement_timeout

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
        try:
            await connection.execute("COMMIT", timeout=self.statement_timeout)
        except TimeoutError as exc:
            # Committed or not, nobody can tell; the connection is still waiting for an answer that may
            # never come. Drop it (its slot is freed by the release that follows) and say so.
            _terminate(connection)
            log.warning("COMMIT timed out; connection discarded", timeout_s=self.statement_timeout)
            raise DatabaseUnavailable(
                "The database did not answer in time; try again shortly.", retry_after=self.retry_after
            ) from exc

    async def rollback(self, connection: Any) -> None:
        if connection.is_closed():
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
        # Bounded: a ROLLBACK into a dead network would otherwise hold the slot until TCP gives up.
        async with asyncio.timeout(self.begin_timeout):
            await connection.execute("ROLLBACK")

    async def release(self, connection: Any, *, discard: bool) -> None:
        try:
            if discard:
                _terminate(connection)
            pool = self._engine.pool
            if pool is None:
                _terminate(connection)  # the pool it came from is closed
                return
            await pool.release(connection, timeout=self.begin_timeout)
        except Exception as exc:  # noqa: BLE001 - asyncpg terminates a connection it cannot reset and frees its slot
            log.warning("connection release failed; connection terminated", error_type=type(exc).__name__)
            _terminate(connection)


def _terminate(connection: Any) -> None:
    """Close ``connection`` at once; its pool slot is freed with it. One terminated before (a COMMIT that
    timed out) is already back in the pool, detached from this proxy: nothing left to do."""
    with contextlib.suppress(asyncpg.exceptions.InterfaceError):
        connection.terminate()


class OwnedPostgresEngine(PostgresEngine):
    """``PostgresEngine`` whose transactions own their connection and whose pool waits are bounded."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        acquire_timeout: float,
        begin_timeout: float,
        retry_after: int,
        statement_timeout: float = 30.0,
    ) -> None:
        """``config`` goes to asyncpg; give it ``command_timeout`` (= ``statement_timeout``) so that every
        statement's wait is bounded, not only COMMIT's."""
        super().__init__(config=config, log_queries=False)
        self.source = PostgresPoolSource(
            self,
            acquire_timeout=acquire_timeout,
            begin_timeout=begin_timeout,
            retry_after=retry_after,
            statement_timeout=statement_timeout,
        )

    def transaction(self, allow_nested: bool = True) -> OwnedTransaction:  # type: ignore[override]
        return OwnedTransaction(self, self.source)

    async def _run_in_pool(self, query: str, args: Sequence[Any] | None = None) -> Any:
        connection = await self.source.acquire()
        discard = False
        try:
            return await connection.fetch(query, *(args or []))
        except Exception as exc:
            # A statement that timed out may still be running (asyncpg is cancelling it): not reused.
            discard = isinstance(exc, TimeoutError)
            if is_database_outage(exc):
                raise unavailable_from(exc, self.source.retry_after, "The database is unavailable") from exc
            raise
        finally:
            await self.source.release(connection, discard=discard)
