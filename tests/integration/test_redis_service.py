"""The service on Redis, on SQLite and PostgreSQL: limits and single use across instances, and what
happens when Redis goes away."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as redis_asyncio

from app.db.tables import ConnectionKeyAttempt
from app.settings import Settings
from tests import redis_server as redis_fixtures
from tests.conftest import make_settings
from tests.integration.conftest import Api

redis_server = redis_fixtures.redis_server
redis_url = redis_fixtures.redis_url
closed_redis_url = redis_fixtures.closed_redis_url

Start = Callable[[Settings], Awaitable[Api]]


async def _quiz(api: Api) -> tuple[uuid.UUID, dict]:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    return alice, await api.create_key(alice, bob)


@pytest.mark.asyncio
async def test_the_flow_on_redis_and_a_replay_is_refused_before_scoring(
    api_factory: Start, database_url: str, redis_url: str
) -> None:
    api = await api_factory(make_settings(database_url, redis={"url": redis_url}))
    ready = (await api.client.get("/ready")).json()
    assert ready["status"] == "ready"
    assert {ready["backends"][k]["backend"] for k in ("cache", "rateLimit", "pubsub")} == {"redis"}

    alice, payload = await _quiz(api)
    answers = await api.answers(payload)
    first = await api.submit(alice, payload["signedPayload"], answers)
    assert first["data"]["submitConnectionKey"]["passed"] is True
    similarity = api.services.scorers["embedding.similarity"]
    scored = similarity.describe()["batching"]["requests"]  # type: ignore[attr-defined]
    # An identical resend (a lost response) gets the recorded result; other answers are a replay. Neither
    # is scored again.
    again = await api.submit(alice, payload["signedPayload"], answers)
    assert again["data"]["submitConnectionKey"] == first["data"]["submitConnectionKey"]
    changed = [{**answers[0], "value": answers[0]["value"] + " as well"}, *answers[1:]]
    replay = await api.submit(alice, payload["signedPayload"], changed)
    assert replay["errors"][0]["extensions"]["code"] == "PAYLOAD_REPLAYED"
    assert similarity.describe()["batching"]["requests"] == scored  # type: ignore[attr-defined]
    assert await ConnectionKeyAttempt.count().run() == 1


@pytest.mark.asyncio
async def test_limits_live_in_redis(api_factory: Start, database_url: str, redis_url: str) -> None:
    limits = {"create_per_user_per_minute": 3, "create_per_target_per_minute": 100}
    api = await api_factory(make_settings(database_url, redis={"url": redis_url}, rate_limit=limits))
    alice = uuid.uuid4()
    targets = [uuid.uuid4() for _ in range(4)]
    for target in targets:
        await api.upsert_profile(target, "Target")
    mutation = "mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }"
    codes = []
    for target in targets:
        result = await api.gql(mutation, alice, t=str(target))
        codes.append(result["errors"][0]["extensions"]["code"] if "errors" in result else "OK")
    assert codes == ["OK", "OK", "OK", "RATE_LIMITED"]
    client = redis_asyncio.from_url(redis_url)
    try:  # the budget is in Redis, where every instance reads it
        assert await client.exists(f"ck:rl:create:user:{alice}") == 1
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_with_redis_down_the_service_answers_and_says_it_is_degraded(
    api_factory: Start, database_url: str, closed_redis_url: str
) -> None:
    api = await api_factory(
        make_settings(
            database_url, redis={"url": closed_redis_url, "rate_limit_failure": "open", "claim_failure": "open"}
        )
    )
    ready = await api.client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded" and set(ready.json()["degraded"]) == {"cache", "rateLimit", "pubsub"}
    alice, payload = await _quiz(api)  # limits fail open, the quiz cache is bypassed
    result = await api.submit(alice, payload["signedPayload"], await api.answers(payload))
    assert result["data"]["submitConnectionKey"]["passed"] is True


@pytest.mark.asyncio
async def test_claims_fail_closed_when_configured(api_factory: Start, database_url: str, closed_redis_url: str) -> None:
    api = await api_factory(make_settings(database_url, redis={"url": closed_redis_url, "claim_failure": "closed"}))
    alice, payload = await _quiz(api)
    result = await api.submit(alice, payload["signedPayload"], await api.answers(payload))
    assert result["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
    assert await ConnectionKeyAttempt.count().run() == 0
