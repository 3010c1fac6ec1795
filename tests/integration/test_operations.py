"""Migrations from empty, back-pressure, rate limits, health/readiness and the OpenAPI document."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.db.engine import Database
from app.db.tables import ALL_TABLES, ConnectionKey
from app.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import MIGRATIONS, Api


@pytest.mark.asyncio
async def test_migrations_from_empty_are_complete_and_idempotent(settings: Settings) -> None:
    db = Database(settings.database)
    await db.start()
    try:
        lines = await db.migrate()
        assert any(f"Running {MIGRATIONS} migrations" in line for line in lines)
        for table in ALL_TABLES:
            assert await table.table_exists().run(), table._meta.tablename
            await table.count().run()
        again = await db.migrate()
        assert any("No migrations need to be run" in line for line in again)
    finally:
        await db.stop()


@pytest.mark.asyncio
async def test_full_queue_answers_unavailable_instead_of_hanging(api_factory, database_url: str) -> None:
    api = await api_factory(make_settings(database_url, queue={"max_size": 1, "workers": 1}))
    target = uuid.uuid4()
    await api.upsert_profile(target, "Target")
    requesters = [uuid.uuid4() for _ in range(3)]
    gate, entered = asyncio.Event(), asyncio.Event()
    library = api.services.templates
    original = library.for_locale

    async def slow_for_locale(locale: str | None):  # the first job holds the only worker
        entered.set()
        await gate.wait()
        return await original(locale)

    library.for_locale = slow_for_locale  # type: ignore[method-assign]
    create = "mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }"
    first = asyncio.create_task(api.gql(create, requesters[0], t=str(target)))
    await asyncio.wait_for(entered.wait(), 5)
    second = asyncio.create_task(api.gql(create, requesters[1], t=str(target)))
    await api.eventually(lambda: _true_when(api.services.queue.depth == 1))
    third = await asyncio.wait_for(api.gql(create, requesters[2], t=str(target)), 5)
    assert third["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
    gate.set()
    assert "errors" not in await first and "errors" not in await second
    assert await ConnectionKey.count().run() == 2


async def _true_when(value: bool) -> bool:
    return value


@pytest.mark.asyncio
async def test_rate_limits_answer_with_retry_after(api_factory, database_url: str) -> None:
    api = await api_factory(make_settings(database_url, rate_limit={"create_per_user_per_minute": 2}))
    requester = uuid.uuid4()
    targets = [uuid.uuid4() for _ in range(3)]
    for target in targets:
        await api.upsert_profile(target, "T")
    for target in targets[:2]:
        created = await api.client.post(
            "/connection-keys", json={"targetUserId": str(target)}, headers=api.headers(requester)
        )
        assert created.status_code == 201
    limited = await api.client.post(
        "/connection-keys", json={"targetUserId": str(targets[2])}, headers=api.headers(requester)
    )
    assert limited.status_code == 429 and limited.json()["code"] == "RATE_LIMITED"
    assert int(limited.headers["retry-after"]) >= 1
    graphql = await api.gql(
        "mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }", requester, t=str(targets[2])
    )
    assert graphql["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert graphql["errors"][0]["extensions"]["retryAfter"] >= 1


@pytest.mark.asyncio
async def test_health_ready_openapi_and_request_ids(api: Api) -> None:
    health = await api.client.get("/health")
    assert health.json() == {"status": "ok"}
    ready = await api.client.get("/ready", headers={"X-Request-ID": "trace-me-123"})
    body = ready.json()
    assert ready.status_code == 200 and body["status"] == "ready", body
    assert body["checks"] == {"database": True, "taskQueue": True, "outboxRelay": True}
    assert ready.headers["x-request-id"] == "trace-me-123"
    generated = (await api.client.get("/health", headers={"X-Request-ID": "bad id with spaces"})).headers[
        "x-request-id"
    ]
    assert uuid.UUID(generated)
    spec = (await api.client.get("/schema/openapi.json")).json()
    assert {
        "/connection-keys",
        "/connection-keys/{key_id}/responses",
        "/profiles/{user_id}",
        "/health",
        "/ready",
    } <= set(spec["paths"])


@pytest.mark.asyncio
async def test_readiness_reports_an_unreachable_database(api: Api) -> None:
    db = api.services.db
    if db.is_sqlite:
        await db.engine.close_pool()
        saved, db.engine.path = db.engine.path, "/nonexistent-dir/ck.sqlite3"
    else:
        await db.engine.close_connection_pool()
        saved, db.engine.config = db.engine.config, {"dsn": "postgresql://nobody@127.0.0.1:9/none", "timeout": 2}
    try:
        ready = await api.client.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
    finally:
        if db.is_sqlite:
            db.engine.path = saved
        else:
            db.engine.config = saved
            await db.engine.start_connection_pool()
    assert (await api.client.get("/ready")).status_code == 200
