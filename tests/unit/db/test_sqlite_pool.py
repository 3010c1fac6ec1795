"""PooledSQLiteEngine shutdown: nothing is left open, however callers behave."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.db.sqlite_pool import PooledSQLiteEngine
from tests.cancellation import CancellationRun, cancel_at_every_step


def engine(tmp_path: Path, size: int = 2) -> PooledSQLiteEngine:
    return PooledSQLiteEngine(str(tmp_path / "pool.sqlite3"), pool_size=size, timeout=5)


@pytest.mark.asyncio
async def test_close_waits_for_a_lease_then_closes_everything(tmp_path: Path) -> None:
    pool = engine(tmp_path)
    idle, leased = await pool.acquire(), await pool.acquire()
    await pool.release(idle)

    async def finish_later() -> None:
        await asyncio.sleep(0.05)
        await pool.release(leased)

    task = asyncio.create_task(finish_later())
    await pool.close_pool(grace_seconds=2)
    await task
    assert pool._connections == set()  # both closed: the idle one and the one returned during close


@pytest.mark.asyncio
async def test_a_lease_kept_past_the_grace_is_closed_and_its_late_return_is_harmless(tmp_path: Path) -> None:
    pool = engine(tmp_path, size=1)
    stuck = await pool.acquire()
    await stuck.execute("BEGIN IMMEDIATE")
    await pool.close_pool(grace_seconds=0.05)
    assert pool._connections == set()
    await pool.release(stuck)  # returned after close: not pooled, no slot released twice
    # The pool opens afresh and still allows exactly pool_size leases.
    again = await pool.acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await pool.acquire()
    await pool.release(again)
    await pool.close_pool()


@pytest.mark.asyncio
async def test_new_leases_are_refused_while_closing(tmp_path: Path) -> None:
    pool = engine(tmp_path, size=1)
    held = await pool.acquire()
    closing = asyncio.create_task(pool.close_pool(grace_seconds=1))
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.acquire()
    await pool.release(held)
    await closing


@pytest.mark.asyncio
async def test_a_read_cancelled_at_any_step_leaves_no_stale_snapshot_behind(tmp_path: Path) -> None:
    """A read cancelled after its statement started on the connection's thread but before its cursor was
    closed kept that statement open, and with it a WAL read snapshot: the pooled connection went on seeing
    the database as it was, so a row written (and committed) since read as missing."""
    pool = engine(tmp_path, size=1)
    await pool.run_ddl("PRAGMA journal_mode=WAL")
    await pool._run_in_new_connection("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    await pool._run_in_new_connection("INSERT INTO t (id) VALUES (0), (1), (2)")
    written = 2

    async def after_each(run: CancellationRun) -> None:
        nonlocal written
        written += 1
        await pool._run_in_new_connection(f"INSERT INTO t (id) VALUES ({written})")  # noqa: S608 - test ints
        rows = await pool._run_in_new_connection("SELECT max(id) AS top FROM t")
        assert rows[0]["top"] == written, f"cancelled after {run.steps} steps: a stale snapshot"
        assert pool.free_reader_slots == 1

    runs = await cancel_at_every_step(lambda: pool._run_in_new_connection("SELECT id FROM t"), after_each)
    assert any(r.cancelled for r in runs)
    await pool.close_pool()
