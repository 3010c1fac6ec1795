"""The SQLite write path: one writer, in line, bounded; transactions that own their connection.

Real SQLite files, no server. "Another process" holding the write lock is a plain ``sqlite3`` connection
of its own (SQLite locks the file, not the process).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest
import pytest_asyncio

from app.db.errors import DatabaseUnavailable
from app.db.sqlite_pool import PooledSQLiteEngine, is_read_statement
from app.db.sqlite_writer import SQLiteWriter
from tests.cancellation import CancellationRun, cancel_at_every_step

POOL_SIZE = 2


def make_engine(path: Path, **options: float) -> PooledSQLiteEngine:
    settings = {"acquire_timeout": 1.0, "begin_timeout": 1.0, "max_pending_writes": 64, **options}
    return PooledSQLiteEngine(
        str(path),
        pool_size=POOL_SIZE,
        timeout=1.0,
        acquire_timeout=settings["acquire_timeout"],
        begin_timeout=settings["begin_timeout"],
        max_pending_writes=int(settings["max_pending_writes"]),
        retry_after=3,
        readers_query_only=True,
    )


@pytest_asyncio.fixture
async def engine(tmp_path: Path) -> AsyncIterator[PooledSQLiteEngine]:
    engine = make_engine(tmp_path / "w.sqlite3")
    await engine.run_ddl("PRAGMA journal_mode=WAL")
    await engine.run_ddl("CREATE TABLE rows (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL)")
    yield engine
    await engine.close_pool()


async def count(engine: PooledSQLiteEngine, batch: int) -> int:
    rows = await engine.run_ddl(f"SELECT count(*) AS n FROM rows WHERE batch = {batch}")  # noqa: S608 - an int
    return int(rows[0]["n"])


async def insert_three(engine: PooledSQLiteEngine, batch: int) -> None:
    async with engine.transaction():
        for _ in range(3):
            await engine.run_ddl(f"INSERT INTO rows (batch) VALUES ({batch})")  # noqa: S608 - an int


async def assert_nothing_held(engine: PooledSQLiteEngine) -> None:
    assert engine.writer.is_idle, f"writer still held or waited for ({engine.writer.pending} pending)"
    assert engine.free_reader_slots == POOL_SIZE
    assert engine.current_transaction.get() is None
    # No lock left: a write gets through at once (no waiting on the busy timeout).
    started = time.monotonic()
    async with asyncio.timeout(0.5):
        async with engine.transaction():
            await engine.run_ddl("INSERT INTO rows (batch) VALUES (-1)")
    assert time.monotonic() - started < 0.5


def test_reads_and_writes_are_told_apart() -> None:
    assert is_read_statement('SELECT "x" FROM t')
    assert is_read_statement("\n  (SELECT 1)")
    assert not is_read_statement('INSERT INTO "t" VALUES (1)')
    assert not is_read_statement("UPDATE t SET x = 1")
    assert not is_read_statement("WITH x AS (SELECT 1) DELETE FROM t")
    assert not is_read_statement("PRAGMA journal_mode=WAL")
    assert not is_read_statement("")


@pytest.mark.asyncio
async def test_a_transaction_cancelled_at_every_step_leaks_nothing_and_is_all_or_nothing(
    engine: PooledSQLiteEngine,
) -> None:
    batch = 0
    outcomes: list[tuple[bool, int]] = []

    async def check(run: CancellationRun) -> None:
        nonlocal batch
        assert run.error is None, run
        stored = await count(engine, batch)
        assert stored in (0, 3), f"step {run.steps}: {stored} of 3 rows committed"
        if run.completed:
            assert stored == 3
        outcomes.append((run.cancelled, stored))
        await assert_nothing_held(engine)
        batch += 1

    runs = await cancel_at_every_step(lambda: insert_three(engine, batch), check)
    assert len(runs) > 5, "the transaction completed too early to test anything"
    assert any(cancelled and stored == 0 for cancelled, stored in outcomes)


@pytest.mark.asyncio
async def test_a_cancelled_begin_that_gets_the_lock_later_is_rolled_back(engine: PooledSQLiteEngine) -> None:
    # Another connection holds the write lock; our BEGIN IMMEDIATE waits for it in SQLite's busy handler.
    other = sqlite3.connect(engine.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    task = asyncio.create_task(insert_three(engine, 7))
    await asyncio.sleep(0.1)  # in BEGIN by now
    task.cancel()
    await asyncio.sleep(0.05)
    other.execute("ROLLBACK")  # the waiting BEGIN now succeeds on the writer's thread ...
    with pytest.raises(asyncio.CancelledError):
        await task
    # ... and was rolled back before the writer was handed on: nothing committed, nothing held.
    assert await count(engine, 7) == 0
    await assert_nothing_held(engine)
    other.close()


@pytest.mark.asyncio
async def test_begin_timeout_while_another_connection_holds_the_lock(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "t.sqlite3", begin_timeout=0.3)
    await engine.run_ddl("PRAGMA journal_mode=WAL")
    await engine.run_ddl("CREATE TABLE rows (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL)")
    other = sqlite3.connect(engine.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as refused:
            await insert_three(engine, 1)
        assert time.monotonic() - started < 1.0
        assert refused.value.extra["retryAfter"] == 3
        # A single statement outside a transaction is refused the same way, not with a raw sqlite3 error.
        with pytest.raises(DatabaseUnavailable):
            await engine.run_ddl("INSERT INTO rows (batch) VALUES (2)")
        assert engine.writer.is_idle
    finally:
        other.execute("ROLLBACK")
        other.close()
    await insert_three(engine, 3)  # the lock is free again: writes go through
    assert await count(engine, 3) == 3
    await engine.close_pool()


@pytest.mark.asyncio
async def test_writes_wait_in_line_in_arrival_order_and_a_full_line_is_refused_at_once(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "q.sqlite3", max_pending_writes=4, acquire_timeout=5.0)
    await engine.run_ddl("CREATE TABLE rows (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL)")
    release = asyncio.Event()
    order: list[int] = []

    async def holder() -> None:
        async with engine.transaction():
            await release.wait()

    async def write(n: int) -> None:
        async with engine.transaction():
            order.append(n)
            await engine.run_ddl(f"INSERT INTO rows (batch) VALUES ({n})")  # noqa: S608 - an int

    held = asyncio.create_task(holder())
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(write(n)) for n in range(3)]
    await asyncio.sleep(0.05)
    assert engine.writer.pending == 4
    assert engine.writer.oldest_pending_seconds() >= 0.05
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        await write(99)  # the fifth: refused without waiting
    with pytest.raises(DatabaseUnavailable):
        await engine.run_ddl("INSERT INTO rows (batch) VALUES (98)")  # single statements queue there too
    assert time.monotonic() - started < 0.1
    release.set()
    await asyncio.gather(held, *waiting)
    assert order == [0, 1, 2]
    assert engine.writer.is_idle
    await engine.close_pool()


@pytest.mark.asyncio
async def test_waiting_for_the_writer_past_the_acquire_timeout_is_unavailable(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "a.sqlite3", acquire_timeout=0.2)
    release = asyncio.Event()

    async def holder() -> None:
        async with engine.transaction():
            await release.wait()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0.02)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        async with engine.transaction():
            pass
    assert 0.15 < time.monotonic() - started < 1.0
    release.set()
    await held
    assert engine.writer.is_idle
    await engine.close_pool()


@pytest.mark.asyncio
async def test_single_statement_writes_wait_for_the_writer_and_readers_cannot_write(
    engine: PooledSQLiteEngine,
) -> None:
    release = asyncio.Event()

    async def holder() -> None:
        async with engine.transaction():
            await engine.run_ddl("INSERT INTO rows (batch) VALUES (1)")
            await release.wait()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0.02)
    single = asyncio.create_task(engine.run_ddl("INSERT INTO rows (batch) VALUES (2)"))
    await asyncio.sleep(0.2)
    assert not single.done()  # in line behind the transaction, not on a pooled connection
    assert await count(engine, 1) == 0  # reads go on meanwhile (WAL) and see only committed rows
    release.set()
    await asyncio.gather(held, single)
    assert await count(engine, 1) == await count(engine, 2) == 1
    reader = await engine.acquire()
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await reader.execute("INSERT INTO rows (batch) VALUES (3)")
    finally:
        await engine.release(reader)


@pytest.mark.asyncio
async def test_a_broken_writer_connection_is_discarded_and_replaced(engine: PooledSQLiteEngine) -> None:
    with pytest.raises(ValueError, match="no active connection"):
        async with engine.transaction() as transaction:
            await engine.run_ddl("INSERT INTO rows (batch) VALUES (5)")
            await transaction.connection.close()  # lost under the transaction: its rollback fails too
            await engine.run_ddl("INSERT INTO rows (batch) VALUES (5)")
    assert engine.writer.is_idle
    await insert_three(engine, 6)  # a fresh connection took its place
    assert await count(engine, 6) == 3
    assert await count(engine, 5) == 0


@pytest.mark.asyncio
async def test_reader_pool_exhaustion_is_unavailable(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "r.sqlite3", acquire_timeout=0.2)
    held = [await engine.acquire() for _ in range(POOL_SIZE)]
    with pytest.raises(DatabaseUnavailable):
        await engine.run_ddl("SELECT 1")
    for connection in held:
        await engine.release(connection)
    assert await engine.run_ddl("SELECT 1 AS one") == [{"one": 1}]
    await engine.close_pool()


@pytest.mark.asyncio
async def test_a_single_statement_write_after_the_connection_died_gets_a_fresh_one(
    engine: PooledSQLiteEngine,
) -> None:
    """The writer's connection is closed behind its back (no outage error: aiosqlite says ``no active
    connection``): the write that finds it fails, and the connection is replaced, so the next one works
    without waiting for a transaction to replace it."""
    connection = await engine.writer.acquire()
    await connection.close()
    await engine.writer.release(connection, discard=False)
    with pytest.raises(ValueError, match="no active connection"):
        await engine.run_ddl("INSERT INTO rows (batch) VALUES (7)")
    await engine.run_ddl("INSERT INTO rows (batch) VALUES (7)")
    assert await count(engine, 7) == 1
    # A statement's own error keeps the connection (nothing to replace): the next write still works.
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await engine.run_ddl("INSERT INTO missing (batch) VALUES (8)")
    await engine.run_ddl("INSERT INTO rows (batch) VALUES (8)")
    assert await count(engine, 8) == 1
    await assert_nothing_held(engine)


@pytest.mark.asyncio
async def test_a_writer_connection_opened_for_a_cancelled_caller_is_closed(tmp_path: Path) -> None:
    """The caller is cancelled while the writer opens its connection: the open runs to its end (it cannot
    be interrupted half-way), and then the connection nobody receives is closed, thread and all, instead of
    leaking (its non-daemon thread would keep the process from exiting)."""
    opened: list[aiosqlite.Connection] = []
    connecting = asyncio.Event()

    async def slow_connect() -> aiosqlite.Connection:
        connection = await aiosqlite.connect(tmp_path / "c.sqlite3")
        opened.append(connection)
        connecting.set()
        await asyncio.sleep(0.2)  # the rest of the set-up (pragmas) still running
        return connection

    writer = SQLiteWriter(slow_connect, acquire_timeout=1.0, begin_timeout=1.0, max_pending=8, retry_after=1)
    caller = asyncio.create_task(writer.acquire())
    await connecting.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    [connection] = opened
    with pytest.raises(ValueError, match="no active connection"):
        await connection.execute("SELECT 1")
    connection._thread.join(timeout=5)  # its loop notices the close within its own poll interval
    assert not connection._thread.is_alive()  # the thread is what would hold the process open
    assert writer.is_idle
    # The next holder opens its own.
    fresh = await writer.acquire()
    assert fresh is opened[1]
    await writer.release(fresh, discard=False)
    await writer.close()
