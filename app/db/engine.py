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
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, TransactionType

from app.db.errors import DATABASE_OUTAGE_ERRORS
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
    """Build (but do not connect) the engine the URL names."""
    if settings.url.startswith("sqlite://"):
        return PooledSQLiteEngine(
            path=str(sqlite_path(settings.url)),
            pool_size=settings.sqlite_pool_size,
            timeout=settings.sqlite_busy_timeout_seconds,
            synchronous=settings.sqlite_synchronous,
        )
    return PostgresEngine(config={"dsn": settings.url}, log_queries=False)


class Database:
    """The process's database: binds tables to the engine, owns the pool, runs migrations."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.engine = engine_from_url(settings)
        self.is_sqlite = isinstance(self.engine, SQLiteEngine)

    @property
    def auto_migrate(self) -> bool:
        return self.is_sqlite if self.settings.auto_migrate is None else self.settings.auto_migrate

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
        if isinstance(self.engine, PooledSQLiteEngine):
            await self.engine.close_pool()
        else:
            await self.engine.close_connection_pool()

    async def ping(self) -> bool:
        """``True`` when the database answers a trivial query."""
        try:
            await self.engine.run_ddl("SELECT 1")
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            return False
        return True

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
        """A write transaction. On SQLite it takes the write lock at BEGIN (``IMMEDIATE``), so two
        writers queue on the busy timeout instead of failing on lock upgrade."""
        if self.is_sqlite:
            transaction = self.engine.transaction(transaction_type=TransactionType.immediate)
        else:
            transaction = self.engine.transaction()
        outer = self.engine.current_transaction.get()
        try:
            async with transaction as entered:
                yield entered
        finally:
            # Piccolo forgets its current transaction only when the commit or rollback succeeds. After a
            # lost connection (the rollback raises too) it would keep the dead one, and every later
            # transaction in this task (a consumer's, for its whole life) would nest into it and fail.
            if self.engine.current_transaction.get() is not outer:
                self.engine.current_transaction.set(outer)

    async def write(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` in a write transaction on a task of its own, so that cancelling the caller (a
        client gone, a request timed out) cannot interrupt the transaction half-way: it commits or rolls
        back and releases its connection whatever happens to the caller."""

        async def run() -> T:
            async with self.transaction():
                return await work()

        return await asyncio.shield(asyncio.create_task(run(), name="db-write"))
