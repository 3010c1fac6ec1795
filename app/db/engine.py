"""Engine construction and binding: one engine per process, chosen by ``[database] url``."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from piccolo.apps.migrations.tables import Migration
from piccolo.engine.base import Engine
from piccolo.engine.sqlite import SQLiteEngine

from app.db.errors import DATABASE_OUTAGE_ERRORS
from app.db.postgres_engine import OwnedPostgresEngine
from app.db.sqlite_pool import PooledSQLiteEngine
from app.db.tables import ALL_TABLES
from app.settings import DatabaseSettings

__all__ = ["DATABASE_OUTAGE_ERRORS", "Database", "engine_from_url", "sqlite_path"]

T = TypeVar("T")

os.environ.setdefault("PICCOLO_CONF", "app.db.piccolo_conf")
log = structlog.get_logger(__name__)


def sqlite_path(url: str) -> Path:
    """``sqlite:///var/x.db`` -> ``var/x.db``; ``sqlite:////tmp/x.db`` -> ``/tmp/x.db``."""
    return Path(url.removeprefix("sqlite:///"))


def engine_from_url(settings: DatabaseSettings) -> Engine:
    """Build (but do not connect) the engine the URL names; both own their transactions' connections."""
    if settings.url.startswith("sqlite://"):
        return PooledSQLiteEngine(
            path=str(sqlite_path(settings.url)),
            pool_size=settings.sqlite_pool_size,
            timeout=settings.sqlite_busy_timeout_seconds,
            synchronous=settings.sqlite_synchronous,
            acquire_timeout=settings.acquire_timeout_seconds,
            begin_timeout=settings.begin_timeout_seconds,
            max_pending_writes=settings.max_pending_writes,
            retry_after=settings.busy_retry_after_seconds,
            readers_query_only=True,
        )
    return OwnedPostgresEngine(
        # command_timeout bounds every statement's wait for an answer (a black-holed link otherwise holds
        # the connection until TCP gives up); the engine bounds COMMIT with the same limit.
        config={"dsn": settings.url, "command_timeout": settings.statement_timeout_seconds},
        acquire_timeout=settings.acquire_timeout_seconds,
        begin_timeout=settings.begin_timeout_seconds,
        retry_after=settings.busy_retry_after_seconds,
        statement_timeout=settings.statement_timeout_seconds,
    )


class Database:
    """The process's database: binds tables to the engine, owns the pool and the writer, runs migrations.

    Every write transaction owns its connection (:class:`~app.db.transaction.OwnedTransaction`); on
    SQLite they all queue for the one writer (:class:`~app.db.sqlite_writer.SQLiteWriter`). Waiting too
    long, a full line, a lock held elsewhere or a lost database answer ``DatabaseUnavailable``.
    """

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.engine = engine_from_url(settings)
        self.is_sqlite = isinstance(self.engine, SQLiteEngine)
        self._writes: set[asyncio.Task[Any]] = set()
        self._probe: asyncio.Task[None] | None = None

    @property
    def auto_migrate(self) -> bool:
        return self.is_sqlite if self.settings.auto_migrate is None else self.settings.auto_migrate

    @property
    def pending_writes(self) -> int:
        """Writes in line or running: on SQLite those waiting for (or holding) the writer, on PostgreSQL
        the :meth:`write` calls in flight."""
        if isinstance(self.engine, PooledSQLiteEngine):
            return self.engine.writer.pending
        return len(self._writes)

    def bind(self) -> None:
        """Point every table, Piccolo's migration table and ``app.db.piccolo_conf.DB`` at this engine."""
        for table in (*ALL_TABLES, Migration):
            table._meta.db = self.engine
        # Piccolo's migration machinery creates its own table classes that look the engine up in the
        # conf module, so the conf module must name this engine too.
        conf = importlib.import_module(os.environ["PICCOLO_CONF"])
        conf.DB = self.engine  # type: ignore[attr-defined]

    async def start(self) -> None:
        """Bind and connect. SQLite gets WAL so readers never wait for the writer."""
        self.bind()
        if self.is_sqlite:
            sqlite_path(self.settings.url).parent.mkdir(parents=True, exist_ok=True)
            await self.engine.run_ddl("PRAGMA journal_mode=WAL")
        else:
            await self.engine.start_connection_pool(
                min_size=self.settings.pool_min_size, max_size=self.settings.pool_max_size
            )

    async def stop(self) -> None:
        """Let :meth:`write` calls in flight finish (their callers may be gone), then close everything."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=self.settings.acquire_timeout_seconds)
        if isinstance(self.engine, PooledSQLiteEngine):
            await self.engine.close_pool()
        else:
            await self.engine.close_connection_pool()

    async def ping(self, timeout: float | None = None) -> bool:
        """``True`` when a trivial read and the write path (:meth:`write_path_ready`) both answer within
        ``timeout`` (default ``[database] ready_timeout_seconds``)."""
        limit = self.settings.ready_timeout_seconds if timeout is None else timeout

        async def read() -> bool:
            try:
                async with asyncio.timeout(limit):
                    await self.engine.run_ddl("SELECT 1")
            except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
                return False
            return True

        readable, writable = await asyncio.gather(read(), self.write_path_ready(limit))
        return readable and writable

    async def write_path_ready(self, timeout: float) -> bool:
        """Whether an empty write transaction gets through (on SQLite: in line for the writer, then
        ``BEGIN IMMEDIATE``) within ``timeout``. A stuck write path answers ``False`` in time, so a
        supervisor can restart the instance. One probe at a time: callers meanwhile wait for the same one."""
        probe = self._probe
        if probe is None or probe.done():
            probe = self._probe = asyncio.create_task(self._probe_write(), name="db-write-probe")
            probe.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(probe)
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            return False
        return True

    async def _probe_write(self) -> None:
        async with self.transaction():
            pass

    async def migrate(self) -> list[str]:
        """Apply pending migrations from ``piccolo_migrations/``; returns Piccolo's progress lines."""
        from piccolo.apps.migrations.commands.forwards import run_forwards

        self.bind()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            result = await run_forwards(app_name="connection_key")
        lines = [line for line in out.getvalue().splitlines() if line.strip()]
        if not result.success:
            raise RuntimeError(f"migrations failed: {result.message}")
        log.info("migrations applied", steps=len(lines))
        return lines

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """A write transaction that owns its connection: acquire (at most ``acquire_timeout_seconds``),
        BEGIN (at most ``begin_timeout_seconds``; ``IMMEDIATE`` on SQLite's one writer), commit or roll
        back, release, even when the caller is cancelled at any ``await``. Inside another transaction it
        joins that one. Timeouts, a full writer line and a lost database raise ``DatabaseUnavailable``."""
        outer = self.engine.current_transaction.get()
        try:
            async with self.engine.transaction() as entered:
                yield entered
        finally:
            # Whatever happened, the task must not keep a dead transaction as its current one: every
            # later transaction in it (a consumer's, for its whole life) would join it and fail.
            if self.engine.current_transaction.get() is not outer:
                self.engine.current_transaction.set(outer)

    async def write(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` in a write transaction on a task of its own, so that cancelling the caller (a
        client gone, a request timed out) cannot interrupt the transaction half-way: it commits or rolls
        back and releases its connection whatever happens to the caller. This is the write path of
        request handlers; on SQLite it waits in line for the one writer. Called inside a transaction,
        ``work`` joins that one (whose owner commits it)."""
        if self.engine.current_transaction.get() is not None:
            return await work()

        async def run() -> T:
            async with self.transaction():
                return await work()

        task = asyncio.create_task(run(), name="db-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        task.add_done_callback(_retrieve)  # a caller that left does not read the outcome
        return await asyncio.shield(task)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
