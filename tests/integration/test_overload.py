"""Overload: with a slow scorer and a flood of submits, the admission gate refuses the excess at once
with a typed UNAVAILABLE and Retry-After (REST 503 + header, GraphQL ``extensions``), never a 500; the
accepted ones finish, and a refused payload, recorded nowhere, goes through when sent again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pluggy
import pytest

import app.services.container as container
from app.db.tables import ConnectionKeyAttempt
from app.settings import Settings
from plugins.scorer import ScoreRequest, ScoreResult
from tests.conftest import make_settings
from tests.integration.conftest import Api

Start = Callable[[Settings], Awaitable[Api]]
PROBLEM = "application/problem+json"
SERVICE_SECONDS = 0.2


class SlowScorer:
    """Scores everything 1.0 after a fixed delay: a stand-in for a model that is the bottleneck."""

    name = "test.slow"
    version = "1.0.0"
    kinds = frozenset({"COMPREHENSION", "CONSENT", "FREE_RESPONSE"})
    deterministic = True

    def __init__(self) -> None:
        self.batches = 0
        self.hold: asyncio.Event | None = None
        """When set to an event, every batch also waits for it (a model that is stuck for now)."""

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        self.batches += 1
        await asyncio.sleep(SERVICE_SECONDS)
        if self.hold is not None:
            await self.hold.wait()
        return [ScoreResult(question_id=r.question_id, score=1.0) for r in batch]


class SlowPlugin:
    def __init__(self, scorer: SlowScorer) -> None:
        self.scorer = scorer

    @pluggy.HookimplMarker("connection_key")
    def register_scorers(self, register: Callable[[object], None]) -> None:
        register(self.scorer)


@pytest.fixture
def slow_scorer(monkeypatch: pytest.MonkeyPatch) -> SlowScorer:
    """Registers the throwaway plugin in every plugin manager the app builds during the test (the
    patch, and so the plugin, is gone afterwards)."""
    scorer = SlowScorer()
    build = container.build_plugin_manager

    def build_with_slow(*args: Any, **kwargs: Any) -> pluggy.PluginManager:
        pm = build(*args, **kwargs)
        pm.register(SlowPlugin(scorer), name="throwaway-slow")
        return pm

    monkeypatch.setattr(container, "build_plugin_manager", build_with_slow)
    return scorer


def overload_settings(database_url: str) -> Settings:
    every_kind = {kind: "test.slow" for kind in ("COMPREHENSION", "CONSENT", "FREE_RESPONSE")}
    return make_settings(
        database_url,
        scoring={"routes": every_kind, "fallbacks": {}},
        rate_limit={"enabled": False},  # only admission may refuse here
        # 2 in flight on 0.2 s jobs drain 10/s: a 0.5 s budget admits 2 running + 4 waiting (5 × 0.2 / 2).
        admission={"concurrency": 2, "max_wait_seconds": 0.5, "ewma_alpha": 1.0},
    )


async def _keys(api: Api, count: int) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    bob = uuid.uuid4()
    await api.upsert_profile(bob, "Bob")
    keys = []
    for i in range(count):
        requester = uuid.uuid4()
        await api.upsert_profile(requester, f"Requester {i}")
        keys.append((requester, await api.create_key(requester, bob)))
    return keys


async def _submit(api: Api, requester: uuid.UUID, payload: dict[str, Any], rest: bool) -> tuple[str, dict[str, Any]]:
    """Submit over REST or GraphQL; returns ("ok" | error code, details) after checking the edge's form."""
    answers = await api.answers(payload)
    if not rest:
        result = await api.submit(requester, payload["signedPayload"], answers)  # asserts HTTP 200
        if "errors" not in result:
            return "ok", result["data"]["submitConnectionKey"]
        (error,) = result["errors"]
        return error["extensions"]["code"], error["extensions"]
    response = await api.client.post(
        f"/connection-keys/{payload['id']}/responses",
        json={"signedPayload": payload["signedPayload"], "answers": answers},
        headers=api.headers(requester),
    )
    if response.status_code == 201:
        return "ok", response.json()
    assert response.headers["content-type"].startswith(PROBLEM), response.text
    body = response.json()
    if body["code"] == "UNAVAILABLE":
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) == body["retryAfter"]
    return body["code"], body


@pytest.mark.asyncio
async def test_a_flood_of_submits_is_shed_with_typed_unavailable_and_the_accepted_finish(
    api_factory: Start, database_url: str, slow_scorer: SlowScorer
) -> None:
    api = await api_factory(overload_settings(database_url))
    keys = await _keys(api, 25)
    warm_requester, warm_payload = keys.pop()
    assert (await _submit(api, warm_requester, warm_payload, rest=False))[0] == "ok"  # teaches the gate S

    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = await asyncio.gather(
        *(_submit(api, requester, payload, rest=i % 2 == 0) for i, (requester, payload) in enumerate(keys))
    )
    elapsed = loop.time() - started

    codes = [code for code, _ in outcomes]
    assert set(codes) <= {"ok", "UNAVAILABLE"}, codes  # nothing else, and never INTERNAL_SERVER_ERROR
    accepted = [i for i, code in enumerate(codes) if code == "ok"]
    refused = [i for i, code in enumerate(codes) if code == "UNAVAILABLE"]
    # 24 at once: about 2 running + 4 waiting are taken, the rest refused; the bound is loose because
    # requests arrive over a few event-loop turns while the first ones already finish.
    assert 4 <= len(accepted) <= 14, codes
    assert len(refused) >= 10, codes
    assert {i % 2 for i in refused} == {0, 1}  # both edges shed
    for i in refused:
        assert outcomes[i][1]["retryAfter"] >= 1
    for i in accepted:
        assert outcomes[i][1]["passed"] is True
    # The accepted ones waited at most their budget: 2 at a time at 0.2 s each, no hour-long tail.
    assert elapsed < len(accepted) / 2 * SERVICE_SECONDS + 2.0
    assert await ConnectionKeyAttempt.count().run() == 1 + len(accepted)

    # Refused payloads were neither recorded nor claimed: sent again, calmly, they go through.
    for i in refused[:3]:
        requester, payload = keys[i]
        code, result = await _submit(api, requester, payload, rest=i % 2 == 0)
        assert code == "ok" and result["passed"] is True
    assert await ConnectionKeyAttempt.count().run() == 1 + len(accepted) + 3
    assert api.services.submit_key.gate.state().in_flight == 0  # type: ignore[attr-defined]
    assert api.services.submit_key.gate.state().queued == 0  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_flood_of_rate_limited_submits_does_not_make_a_normal_users_unavailable(
    api_factory: Start, database_url: str, slow_scorer: SlowScorer
) -> None:
    """Both slots are busy scoring; one client over its rate limit floods the service with submits. They
    are refused RATE_LIMITED before the admission gate, taking no place in its line, so a normal user's
    submit waits its turn and is scored: it is not refused UNAVAILABLE because of someone else's flood."""
    settings = overload_settings(database_url)
    limits = {"enabled": True, "submit_per_user_per_minute": 1, "submit_per_ip_per_minute": 10_000}
    admission = {"concurrency": 2, "max_wait_seconds": 0.5, "ewma_alpha": 1.0}
    api = await api_factory(
        make_settings(database_url, **{**_sections(settings), "rate_limit": limits, "admission": admission})
    )
    keys = await _keys(api, 5)
    (warm, warm_payload), (flooder, flood_payload), normal, *busy = keys
    assert (await _submit(api, warm, warm_payload, rest=False))[0] == "ok"  # teaches the gate S = 0.2 s
    assert (await _submit(api, flooder, flood_payload, rest=False))[0] == "ok"  # spends the flooder's limit

    slow_scorer.hold = asyncio.Event()
    scoring = slow_scorer.batches
    running = [asyncio.create_task(_submit(api, r, p, rest=False)) for r, p in busy]
    async with asyncio.timeout(10):
        while slow_scorer.batches < scoring + 2:  # noqa: ASYNC110 - the scorer's state
            await asyncio.sleep(0.01)
    gate = api.services.submit_key.gate  # type: ignore[attr-defined]
    assert gate.state().in_flight == 2

    flood = await asyncio.gather(*(_submit(api, flooder, flood_payload, rest=i % 2 == 0) for i in range(20)))
    assert [code for code, _ in flood] == ["RATE_LIMITED"] * 20, flood
    assert gate.state().queued == 0 and gate.state().refused == 0

    waiting = asyncio.create_task(_submit(api, *normal, rest=True))
    async with asyncio.timeout(10):
        while gate.state().queued == 0 and not waiting.done():  # noqa: ASYNC110 - the gate's state
            await asyncio.sleep(0.01)
    slow_scorer.hold.set()
    code, result = await waiting
    assert code == "ok" and result["passed"] is True, result
    assert [code for code, _ in await asyncio.gather(*running)] == ["ok", "ok"]


@pytest.mark.asyncio
async def test_admission_off_queues_everyone(api_factory: Start, database_url: str, slow_scorer: SlowScorer) -> None:
    # The "before" of the benchmark: without the gate nothing is refused, everyone just waits.
    settings = overload_settings(database_url)
    api = await api_factory(make_settings(database_url, **{**_sections(settings), "admission": {"enabled": False}}))
    keys = await _keys(api, 8)
    outcomes = await asyncio.gather(*(_submit(api, r, p, rest=i % 2 == 0) for i, (r, p) in enumerate(keys)))
    assert [code for code, _ in outcomes] == ["ok"] * 8
    assert not hasattr(api.services.submit_key, "gate")


def _sections(settings: Settings) -> dict[str, dict[str, Any]]:
    return {"scoring": {"routes": dict(settings.scoring.routes), "fallbacks": {}}, "rate_limit": {"enabled": False}}
