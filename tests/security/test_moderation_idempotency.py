"""``Idempotency-Key`` on moderator overrides under concurrency, on SQLite and PostgreSQL: the same
request fired many times at once decides once (one decision row, one outbox event, one audit entry);
every other answer is a replay of the first, and a key reused for another request is a typed 409 that
writes nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import pytest_asyncio

from app.db.tables import AuditLogEntry, ConnectionKeyEvent, ModerationDecision
from tests.conftest import make_settings
from tests.integration.conftest import Api, api_factory  # noqa: F401 - the running-app fixture
from tests.security.test_moderation import Start, assert_problem, audit_actions, failed_attempt, moderator_headers

pytestmark = pytest.mark.asyncio

CONCURRENT = 10


@pytest_asyncio.fixture
async def api(api_factory: Start, database_url: str) -> Api:  # noqa: F811 - the fixture imported above
    return await api_factory(make_settings(database_url, retry={"cooldown_seconds": 3600}))


async def counts(attempt_id: uuid.UUID) -> tuple[int, int, list[tuple[str, str]]]:
    decisions = await ModerationDecision.count().where(ModerationDecision.attempt_id == attempt_id).run()
    events = await ConnectionKeyEvent.count().where(ConnectionKeyEvent.event_type == "CONVERSATION_UNLOCKED").run()
    return decisions, events, await audit_actions(attempt_id)


async def fire(
    api: Api, url: str, bodies: list[dict[str, Any]], headers: dict[str, str], stagger: float = 0.0
) -> list[Any]:
    """POST every body at once (``stagger``: the n-th starts n * stagger seconds late, so some arrive
    while the first is still deciding and others just after it committed)."""

    async def post(n: int, body: dict[str, Any]) -> Any:
        await asyncio.sleep(n * stagger)
        return await api.client.post(url, json=body, headers=headers)

    return list(await asyncio.gather(*(post(n, body) for n, body in enumerate(bodies))))


@pytest.mark.parametrize("stagger", [0.0, 0.003], ids=["together", "staggered"])
async def test_the_same_override_fired_at_once_decides_once(api: Api, stagger: float) -> None:
    _, _, _, outcome = await failed_attempt(api)
    attempt_id = uuid.UUID(outcome["attemptId"])
    url = f"/moderation/attempts/{attempt_id}/override"
    headers = {**moderator_headers(api), "Idempotency-Key": f"burst-{uuid.uuid4().hex}"}
    body = {"decision": "UNLOCK", "reason": "The scorer missed a paraphrase."}

    responses = await fire(api, url, [body] * CONCURRENT, headers, stagger)

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * (CONCURRENT - 1) + [201], [r.text for r in responses]
    bodies = [r.json() for r in responses]
    first = next(b for r, b in zip(responses, bodies, strict=True) if r.status_code == 201)
    assert first["applied"] is True and first["replayed"] is False and first["unlockState"] == "UNLOCKED"
    for replay in (b for r, b in zip(responses, bodies, strict=True) if r.status_code == 200):
        assert replay == {**first, "replayed": True}  # the first answer again, marked as a replay
    decisions, events, actions = await counts(attempt_id)
    assert decisions == 1 and events == 1
    assert actions.count(("moderation.override", "moderator")) == 1
    assert ("moderation.override_unchanged", "moderator") not in actions  # no replay was mistaken for "no-op"

    # The same key with another body: a typed 409, and nothing more is written.
    audit_before = await AuditLogEntry.count().run()
    events_before = await ConnectionKeyEvent.count().run()
    for other in (
        {"decision": "LOCK", "reason": "Unlock was a mistake"},
        {"decision": "UNLOCK", "reason": "Another reason altogether"},
    ):
        assert_problem(await api.client.post(url, json=other, headers=headers), 409, "CONFLICT")
    assert await ModerationDecision.count().run() == 1
    assert await AuditLogEntry.count().run() == audit_before
    assert await ConnectionKeyEvent.count().run() == events_before


async def test_one_key_raced_with_two_bodies_keeps_the_winner_and_refuses_the_other(api: Api) -> None:
    _, _, _, outcome = await failed_attempt(api)
    attempt_id = uuid.UUID(outcome["attemptId"])
    url = f"/moderation/attempts/{attempt_id}/override"
    headers = {**moderator_headers(api), "Idempotency-Key": f"race-{uuid.uuid4().hex}"}
    a = {"decision": "UNLOCK", "reason": "Reason A"}
    b = {"decision": "UNLOCK", "reason": "Reason B"}
    sent = [a, b] * (CONCURRENT // 2)

    responses = await fire(api, url, sent, headers)

    created = [(s, r) for s, r in zip(sent, responses, strict=True) if r.status_code == 201]
    assert len(created) == 1, [r.text for r in responses]
    winner, first = created[0][0], created[0][1].json()
    assert first["decision"]["reason"] == winner["reason"]
    for body, response in zip(sent, responses, strict=True):
        if response is created[0][1]:
            continue
        if body is winner:
            assert response.status_code == 200, response.text
            assert response.json() == {**first, "replayed": True}
        else:
            assert_problem(response, 409, "CONFLICT")
    decisions, events, actions = await counts(attempt_id)
    assert decisions == 1 and events == 1
    assert actions == [("moderation.override", "moderator")]


async def test_a_request_that_missed_the_key_just_before_the_first_committed_replays(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrow window, held open: the second request looks the key up (not there yet), then reads the
    conversation after the first committed. What it sees (already unlocked) is the first's doing, so it
    must replay, neither answer ``applied: false`` nor audit a no-op."""
    _, _, _, outcome = await failed_attempt(api)
    attempt_id = uuid.UUID(outcome["attemptId"])
    store = api.services.moderation._store
    real = store.decision_by_idempotency
    misses = 0

    async def slow_second_miss(key_id: uuid.UUID) -> Any:
        nonlocal misses
        found = await real(key_id)
        if found is None:
            misses += 1
            if misses == 2:
                await asyncio.sleep(0.5)  # the first request commits meanwhile (PostgreSQL; SQLite queues it)
        return found

    monkeypatch.setattr(store, "decision_by_idempotency", slow_second_miss)
    url = f"/moderation/attempts/{attempt_id}/override"
    headers = {**moderator_headers(api), "Idempotency-Key": f"window-{uuid.uuid4().hex}"}
    for decision in ("UNLOCK", "LOCK"):  # the late request finds the conversation already so, each time
        misses = 0
        key = {**headers, "Idempotency-Key": f"{headers['Idempotency-Key']}-{decision}"}
        body = {"decision": decision, "reason": f"{decision} it"}
        responses = await fire(api, url, [body, body], key)
        assert sorted(r.status_code for r in responses) == [200, 201], [r.text for r in responses]
        assert all(r.json()["applied"] is True for r in responses), [r.text for r in responses]
    assert await ModerationDecision.count().where(ModerationDecision.attempt_id == attempt_id).run() == 2
    assert await audit_actions(attempt_id) == [("moderation.override", "moderator")] * 2
