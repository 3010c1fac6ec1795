"""Connections owned end to end (issue 10, item 1), on SQLite and PostgreSQL: a transaction cancelled at
any step, an exhausted pool, a connection cut mid-transaction, a wedge attempt over WebSocket and lock
contention over HTTP leave no connection leased and no lock held, and answer typed ``UNAVAILABLE``.

Real servers only: SQLite files, PostgreSQL 16 from pgserver, the app under uvicorn for WebSockets, the
TCP proxy of ``test_database_outage`` to cut PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from piccolo.columns import Integer
from piccolo.table import Table

from app.db.engine import Database
from app.db.errors import DatabaseUnavailable, is_database_outage
from app.db.sqlite_pool import PooledSQLiteEngine
from app.settings import Settings
from tests.cancellation import CancellationRun, cancel_at_every_step
from tests.conftest import make_settings
from tests.integration.conftest import Api
from tests.integration.test_database_outage import (  # noqa: F401 - fixtures
    _proxy_target,
    _through_proxy,
    postgres_proxy,
    postgres_url,
)
from tests.tcp_proxy import TcpProxy
from tests.ws_client import TRANSPORT_WS, GraphQLWebSocket, serve_app

POOL_MAX = 2
WAITING_ON_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
)
FAST = {"acquire_timeout_seconds": 0.5, "begin_timeout_seconds": 0.5, "busy_retry_after_seconds": 2}


class FaultRow(Table, tablename="fault_rows"):
    batch = Integer()
    n = Integer()


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    settings = make_settings(database_url, database={**FAST, "pool_min_size": 1, "pool_max_size": POOL_MAX})
    database = Database(settings.database)
    await database.start()
    FaultRow._meta.db = database.engine
    await FaultRow.create_table(if_not_exists=True).run()
    yield database
    await database.stop()


async def stored(batch: int) -> int:
    return await FaultRow.count().where(FaultRow.batch == batch).run()


async def insert_three(db: Database, batch: int) -> None:
    """Three statements through Piccolo's table API: they run on the transaction's own connection."""
    async with db.transaction():
        for n in range(3):
            await FaultRow.insert(FaultRow(batch=batch, n=n)).run()
        assert await FaultRow.count().where(FaultRow.batch == batch).run() <= 3


async def all_slots_free(db: Database) -> None:
    """Every connection a transaction can get is free: that many transactions open at once, at once
    (a leaked slot would make one of them wait out the acquire timeout and raise)."""
    slots = 1 if db.is_sqlite else POOL_MAX
    if isinstance(db.engine, PooledSQLiteEngine):
        assert db.engine.writer.is_idle
    assert db.engine.current_transaction.get() is None
    inside = 0
    everyone_in = asyncio.Event()

    async def hold() -> None:
        nonlocal inside
        async with db.transaction():
            inside += 1
            if inside == slots:
                everyone_in.set()
            await everyone_in.wait()

    async with asyncio.timeout(2.0):
        await asyncio.gather(*(hold() for _ in range(slots)))


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_transaction_cancelled_at_every_step_leaks_nothing(db: Database) -> None:
    batch = 0
    cancelled_empty = 0

    async def check(run: CancellationRun) -> None:
        nonlocal batch, cancelled_empty
        assert run.error is None, run
        count = await stored(batch)
        assert count in (0, 3), f"step {run.steps}: {count} of 3 rows committed"
        assert count == 3 or not run.completed
        cancelled_empty += run.cancelled and count == 0
        await all_slots_free(db)
        batch += 1

    runs = await cancel_at_every_step(lambda: insert_three(db, batch), check)
    assert len(runs) > 5 and cancelled_empty > 0


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_write_runs_to_its_end_whenever_its_caller_is_cancelled(db: Database) -> None:
    batch = 0

    async def check(run: CancellationRun) -> None:
        nonlocal batch
        assert run.error is None, run
        async with asyncio.timeout(5):
            while db.pending_writes:  # noqa: ASYNC110 - nothing to wait on: the count lives in the database
                await asyncio.sleep(0.005)
        # Cancelled before it reached ``write``, nothing; once there, all of it, whatever the caller did.
        assert await stored(batch) == (0 if run.steps == 0 else 3), run
        await all_slots_free(db)
        batch += 1

    await cancel_at_every_step(lambda: db.write(lambda: _rows(batch)), check)


async def _rows(batch: int) -> None:
    for n in range(3):
        await FaultRow.insert(FaultRow(batch=batch, n=n)).run()


@pytest.mark.asyncio
async def test_pool_exhaustion_answers_unavailable_in_time_and_recovers(db: Database) -> None:
    slots = 1 if db.is_sqlite else POOL_MAX
    release, all_in = asyncio.Event(), asyncio.Event()
    inside = 0

    async def hold() -> None:
        nonlocal inside
        async with db.transaction():
            inside += 1
            if inside == slots:
                all_in.set()
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(slots)]
    async with asyncio.timeout(2):
        await all_in.wait()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as refused:
        await insert_three(db, 1)
    assert 0.4 < time.monotonic() - started < 2.0
    assert refused.value.extra == {"retryAfter": 2} and is_database_outage(refused.value)
    assert not await db.write_path_ready(0.3)  # readiness sees the stuck write path in its own time
    release.set()
    await asyncio.gather(*holders)
    await insert_three(db, 2)
    assert await stored(1) == 0 and await stored(2) == 3
    assert await db.ping()
    await all_slots_free(db)


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_failed_rollbacks_on_postgresql_free_their_pool_slots(
    postgres_url: str,  # noqa: F811 - the fixture
    postgres_proxy: TcpProxy,  # noqa: F811 - the fixture
) -> None:
    """The connection is cut mid-transaction (the statement in flight and the rollback both fail) more
    times than the pool has slots; afterwards the pool still serves every slot."""
    url = _through_proxy(postgres_url, postgres_proxy.port)
    # A leaked slot would never come back, so a longer acquire timeout still fails then; it only spares
    # the test a reconnection through the proxy that is slow on a busy machine.
    database = {**FAST, "acquire_timeout_seconds": 5.0, "pool_min_size": 1, "pool_max_size": POOL_MAX}
    settings = make_settings(url, database=database)
    db = Database(settings.database)
    await db.start()
    FaultRow._meta.db = db.engine
    try:
        await FaultRow.create_table(if_not_exists=True).run()
        for attempt in range(POOL_MAX + 3):
            with pytest.raises(Exception) as failed:  # asyncpg's own error for the lost statement
                async with db.transaction():
                    await FaultRow.insert(FaultRow(batch=100 + attempt, n=0)).run()
                    postgres_proxy.cut()
                    await FaultRow.insert(FaultRow(batch=100 + attempt, n=1)).run()
            assert is_database_outage(failed.value), failed.value
            postgres_proxy.restore()
            await insert_three(db, attempt)  # the next transaction gets a slot, at once
        for attempt in range(POOL_MAX + 3):
            assert await stored(100 + attempt) == 0 and await stored(attempt) == 3
        await all_slots_free(db)
    finally:
        postgres_proxy.restore()
        await db.stop()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["postgres"])
async def test_transactions_cancelled_while_blocked_in_postgresql_free_their_slots(
    db: Database, database_url: str
) -> None:
    """A statement waits in the server on a lock and its caller is cancelled (asyncpg is still cancelling
    it when the rollback comes), more times than the pool has slots: each slot comes back."""
    direct = await asyncpg.connect(database_url)
    try:
        blocker = direct.transaction()
        await blocker.start()
        await direct.execute("LOCK TABLE fault_rows IN ACCESS EXCLUSIVE MODE")
        for attempt in range(POOL_MAX + 2):
            task = asyncio.create_task(insert_three(db, 200 + attempt))
            async with asyncio.timeout(10):
                while not await direct.fetchval(WAITING_ON_A_LOCK):  # noqa: ASYNC110 - the state is the server's
                    await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await blocker.rollback()
    finally:
        await direct.close()
    await insert_three(db, 300)
    assert await stored(300) == 3 and all([await stored(200 + n) == 0 for n in range(POOL_MAX + 2)])
    await all_slots_free(db)


class BlackHoleProxy:
    """A TCP proxy whose links can be made to swallow every byte, both ways, while staying open: a
    black-holed route, where nothing fails and nothing answers (the client's kernel sees its bytes taken,
    so only a timeout of its own ends the wait). It runs its own loop in a thread, as Piccolo's engine
    blocks the test's loop once when it is built."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.port = 0
        self.swallowing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="black-hole", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> BlackHoleProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if isinstance(self.target, str):
            up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for end in (writer, up_writer):
                end.transport.abort()
                self._writers.discard(end)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not self.swallowing:
                    writer.write(data)
                    await writer.drain()


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_statements_and_commits_on_a_black_holed_link_are_bounded_and_free_their_slots(
    postgres_url: str,  # noqa: F811 - the fixture
) -> None:
    """The route to PostgreSQL swallows everything: a COMMIT (more times than the pool has slots) and a
    statement in a transaction's body each answer within ``statement_timeout_seconds`` (plus the bounded
    rollback), typed as an outage, instead of holding their slot until TCP gives up (~15 minutes: the
    clean-up cannot be cancelled). Afterwards every slot serves again."""
    with BlackHoleProxy(_proxy_target(postgres_url)) as proxy:
        url = _through_proxy(postgres_url, proxy.port)
        limits = {**FAST, "statement_timeout_seconds": 1.0, "pool_min_size": 1, "pool_max_size": POOL_MAX}
        db = Database(make_settings(url, database=limits).database)
        await db.start()
        FaultRow._meta.db = db.engine
        try:
            await FaultRow.create_table(if_not_exists=True).run()
            for attempt in range(POOL_MAX + 1):
                started = time.monotonic()
                with pytest.raises(DatabaseUnavailable):
                    async with db.transaction():
                        await FaultRow.insert(FaultRow(batch=400 + attempt, n=0)).run()
                        proxy.swallowing = True  # the COMMIT goes into the hole
                proxy.swallowing = False
                assert time.monotonic() - started < 4, "the COMMIT waited past its timeout"

            started = time.monotonic()
            with pytest.raises(Exception) as failed:
                async with db.transaction():
                    proxy.swallowing = True
                    await FaultRow.insert(FaultRow(batch=410, n=0)).run()
            proxy.swallowing = False
            assert is_database_outage(failed.value), failed.value
            assert time.monotonic() - started < 4, "the statement waited past its timeout"

            await insert_three(db, 411)
            assert await stored(411) == 3
            await all_slots_free(db)
        finally:
            proxy.swallowing = False
            await db.stop()


# -- black box: the app ----------------------------------------------------------------------------------

UPSERT = "mutation($input: ProfileInput!) { upsertMyProfile(input: $input) { userId } }"


def _profile(name: str) -> dict[str, Any]:
    return {
        "displayName": name,
        "bio": f"{name} likes tests",
        "prompts": [{"question": "Favourite food?", "answer": "Soup"}],
        "consentPreferences": [{"topic": "pace", "statement": "Slowly"}],
        "locale": "en",
    }


def _codes(message: dict[str, Any]) -> list[str]:
    payload = message.get("payload")
    errors = payload if isinstance(payload, list) else (payload or {}).get("errors") or []
    return [(error.get("extensions") or {}).get("code", "?") for error in errors]


@pytest.mark.asyncio
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_cancelled_websocket_upserts_do_not_wedge_the_service(
    api_factory: Callable[[Settings], Awaitable[Api]], database_url: str
) -> None:
    """The wedge of issue 10: WebSocket ``upsertMyProfile`` operations cancelled 0-60 ms after subscribe
    (``complete``, or the socket closed), beside HTTP upserts cancelled as they run. Afterwards writes and
    ``/ready`` work, nothing is held, and nothing answered 500."""
    api = await api_factory(make_settings(database_url))
    rng = random.Random(10)
    codes: list[str] = []
    results: list[str] = []
    statuses: list[int] = []
    users = [uuid.uuid4() for _ in range(20)]

    async def socket_user(url: str, user: uuid.UUID, operations: int) -> None:
        done = 0
        while done < operations:
            async with GraphQLWebSocket.open(url, TRANSPORT_WS) as client:
                ack = await client.init({"Authorization": f"Bearer {api.token(user)}"})
                assert ack["type"] == "connection_ack", ack
                while done < operations:
                    operation = f"op{done}"
                    await client.subscribe(operation, UPSERT, input=_profile(f"user{done}"))
                    done += 1
                    if done % 5 == 0:  # one in five is waited for: its answer must be a result, not a 500
                        results.append(await _until_complete(client, operation, codes))
                        continue
                    await _collect(client, codes, rng.uniform(0, 0.06))
                    if rng.random() < 0.3:
                        break  # close the socket with the operation (maybe) in flight
                    await client.send({"id": operation, "type": "complete"})

    async def http_user(user: uuid.UUID, operations: int) -> None:
        for index in range(operations):
            request = api.client.put(f"/profiles/{user}", json=_profile(f"http{index}"), headers=api.headers(user))
            # Two in three are cancelled 0-60 ms in (the handler with them: ASGITransport runs it in this
            # task); the third is answered.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rng.uniform(0, 0.06) if index % 3 else 10):
                    statuses.append((await request).status_code)

    started = time.monotonic()
    async with serve_app(api.app) as base:
        url = base + api.settings.server.graphql_path
        await asyncio.gather(
            *(socket_user(url, user, 10) for user in users), *(http_user(user, 5) for user in users[:8])
        )
    took = time.monotonic() - started

    assert len(results) == 40 and set(results) <= {"data", "UNAVAILABLE"}, results
    assert "INTERNAL_SERVER_ERROR" not in codes, codes
    assert set(codes) <= {"UNAVAILABLE"}, codes
    assert len(statuses) >= 8 * 2, statuses
    assert 500 not in statuses and set(statuses) <= {200, 503}, statuses
    db = api.services.db
    assert isinstance(db.engine, PooledSQLiteEngine)
    await api.eventually(lambda: _true(db.engine.writer.is_idle), timeout=10)
    ready = await asyncio.wait_for(api.client.get("/ready"), timeout=3)
    assert ready.status_code == 200, ready.text
    user = uuid.uuid4()
    result = await asyncio.wait_for(api.gql(UPSERT, user, input=_profile("after")), timeout=5)
    assert "errors" not in result, result
    assert (await api.client.get(f"/profiles/{user}", headers=api.headers(user))).status_code in (200, 405)
    assert db.engine.free_reader_slots == api.settings.database.sqlite_pool_size
    assert took < 60


async def _collect(client: GraphQLWebSocket, codes: list[str], seconds: float) -> None:
    """Whatever the server sends within ``seconds``: error codes of its results, kept."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                message = await client.receive(timeout=seconds + 1)
                codes.extend(_codes(message))


async def _until_complete(client: GraphQLWebSocket, operation: str, codes: list[str]) -> str:
    """Wait for ``operation``'s answer: ``"data"``, or its error code."""
    outcome = "none"
    async with asyncio.timeout(10):
        while True:
            message = await client.receive(timeout=10)
            found = _codes(message)
            codes.extend(found)
            if message.get("id") != operation:
                continue
            if message["type"] == "next":
                outcome = found[0] if found else "data"
            elif message["type"] == "error":
                outcome = found[0] if found else "error"
            if message["type"] in ("complete", "error"):
                return outcome


async def _true(value: bool) -> bool:
    return value


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_contention_answers_typed_unavailable_with_retry_after(
    api_factory: Callable[[Settings], Awaitable[Api]], database_url: str, backend: str
) -> None:
    """The write path busy (SQLite: another connection holds the write lock; PostgreSQL: every pooled
    connection taken): REST answers 503 problem+json with Retry-After, GraphQL ``UNAVAILABLE`` with
    ``retryAfter``, ``/ready`` 503 within its own timeout; all recover when the contention ends."""
    settings = make_settings(
        database_url, database={**FAST, "pool_min_size": 1, "pool_max_size": POOL_MAX, "ready_timeout_seconds": 1.0}
    )
    api = await api_factory(settings)
    user = uuid.uuid4()
    await api.upsert_profile(user, "Before")  # the user's data key exists; the write below is the upsert itself
    release = await _contend(api)
    try:
        rest = await api.client.put(f"/profiles/{user}", json=_profile("Busy"), headers=api.headers(user))
        assert rest.status_code == 503, rest.text
        assert rest.headers["content-type"].startswith("application/problem+json")
        assert rest.headers["retry-after"] == "2" and rest.json()["code"] == "UNAVAILABLE"
        graphql = await api.gql(UPSERT, user, input=_profile("Busy"))
        error = graphql["errors"][0]
        assert error["extensions"]["code"] == "UNAVAILABLE" and error["extensions"]["retryAfter"] == 2, error
        started = time.monotonic()
        ready = await api.client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
        assert time.monotonic() - started < 2.5
    finally:
        await release()
    assert (await api.client.put(f"/profiles/{user}", json=_profile("After"), headers=api.headers(user))).is_success
    assert (await api.client.get("/ready")).status_code == 200


async def _contend(api: Api) -> Callable[[], Awaitable[None]]:
    """Make the write path busy; returns what ends it."""
    db = api.services.db
    if isinstance(db.engine, PooledSQLiteEngine):
        other = sqlite3.connect(db.engine.path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")

        async def release_lock() -> None:
            other.execute("ROLLBACK")
            other.close()

        return release_lock
    pool = db.engine.pool
    assert pool is not None
    held = [await pool.acquire() for _ in range(POOL_MAX)]

    async def release_pool() -> None:
        for connection in held:
            await pool.release(connection)

    return release_pool


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["sqlite"])  # the bounded writer line is SQLite's
async def test_http_client_gets_no_500_when_the_write_line_is_full(
    api_factory: Callable[[Settings], Awaitable[Api]], database_url: str
) -> None:
    """More writes than the line holds, at once: the surplus is refused with 503, never 500."""
    api = await api_factory(make_settings(database_url, database={"max_pending_writes": 4}))
    users = [uuid.uuid4() for _ in range(24)]
    responses: list[httpx.Response] = await asyncio.gather(
        *(api.client.put(f"/profiles/{u}", json=_profile("Many"), headers=api.headers(u)) for u in users)
    )
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] and response.json()["code"] == "UNAVAILABLE"
