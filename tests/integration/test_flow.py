"""The whole flow, create -> submit -> unlock, on SQLite and PostgreSQL, over GraphQL and REST."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from app.db.outbox_store import envelope_of
from app.db.tables import (
    ConnectionKeyAttempt,
    ConnectionKeyEvent,
    Conversation,
    ConversationRequesterState,
    ProcessedEvent,
    requester_state_id,
)
from app.domain.events import EventEnvelope
from app.services.unlock_orchestrator import CONSUMER_GROUP
from tests.integration.conftest import Api


async def _pair(api: Api) -> tuple[uuid.UUID, uuid.UUID]:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    return alice, bob


async def _conversation_state(api: Api, user: uuid.UUID, conversation_id: str) -> dict:
    result = await api.gql(
        "query($id: ID!) { conversation(id: $id) { id participantIds unlockState unlockedAt } }",
        user,
        id=conversation_id,
    )
    assert "errors" not in result, result
    return result["data"]["conversation"]


@pytest.mark.asyncio
async def test_graphql_flow_unlocks_the_conversation_for_both(api: Api) -> None:
    alice, bob = await _pair(api)
    payload = await api.create_key(alice, bob)
    kinds = [q["kind"] for q in payload["questions"]]
    assert kinds == ["COMPREHENSION", "COMPREHENSION", "CONSENT", "CONSENT", "FREE_RESPONSE"]

    result = await api.submit(alice, payload["signedPayload"], await api.answers(payload))
    assert "errors" not in result, result
    outcome = result["data"]["submitConnectionKey"]
    assert outcome["passed"] is True and outcome["score"] >= 0.9, outcome
    assert outcome["unlockState"] == "UNLOCKED" and outcome["feedback"] == []
    scorers = {s["kind"]: s["scorer"] for s in outcome["breakdown"]}
    # No LLM endpoint is configured by default: free responses fall back to the embedding rubric.
    assert scorers == {
        "COMPREHENSION": "embedding.similarity",
        "CONSENT": "rule.choice",
        "FREE_RESPONSE": "embedding.rubric",
    }

    async def unlocked() -> bool:
        return (await _conversation_state(api, bob, payload["conversationId"]))["unlockState"] == "UNLOCKED"

    await api.eventually(unlocked)
    for user in (alice, bob):
        conversation = await _conversation_state(api, user, payload["conversationId"])
        assert sorted(conversation["participantIds"]) == sorted([str(alice), str(bob)])
        assert conversation["unlockedAt"] is not None

    async def all_published() -> bool:
        rows = await ConnectionKeyEvent.select(ConnectionKeyEvent.event_type, ConnectionKeyEvent.published_at).run()
        return len(rows) == 3 and all(r["published_at"] for r in rows)

    await api.eventually(all_published)
    types = [r["event_type"] for r in await ConnectionKeyEvent.select().order_by(ConnectionKeyEvent.sequence).run()]
    assert types == ["KEY_CREATED", "QUIZ_COMPLETED", "CONVERSATION_UNLOCKED"]
    attempt = await ConnectionKeyAttempt.select().first().run()
    assert attempt["total_elapsed_ms"] == 1500 * 5
    breakdown = msgspec.json.decode(attempt["breakdown"])
    assert {b["scorer_version"] for b in breakdown} == {"1.0.0"}
    (free,) = [b for b in breakdown if b["kind"] == "FREE_RESPONSE"]
    assert (free["fallback_from"], free["fallback_reason"]) == ("llm.rubric", "scorer_unavailable")

    # Unlocked is final: a new quiz for this pair is a conflict.
    again = await api.gql("mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }", alice, t=str(bob))
    assert again["errors"][0]["extensions"]["code"] == "CONFLICT"


@pytest.mark.asyncio
async def test_rest_flow_matches_graphql(api: Api) -> None:
    alice, bob = await _pair(api)
    created = await api.client.post("/connection-keys", json={"targetUserId": str(bob)}, headers=api.headers(alice))
    assert created.status_code == 201, created.text
    payload = created.json()
    assert set(payload) == {"id", "conversationId", "targetUserId", "questions", "signedPayload", "expiresAt"}
    body = {"signedPayload": payload["signedPayload"], "answers": await api.answers(payload)}
    submitted = await api.client.post(
        f"/connection-keys/{payload['id']}/responses", json=body, headers=api.headers(alice)
    )
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["unlockState"] == "UNLOCKED"

    async def unlocked() -> bool:
        row = await Conversation.select().where(Conversation.id == uuid.UUID(payload["conversationId"])).first().run()
        return row["unlock_state"] == "UNLOCKED"

    await api.eventually(unlocked)


@pytest.mark.asyncio
async def test_the_payload_never_carries_the_answer_key(api: Api) -> None:
    alice, bob = await _pair(api)
    payload = await api.create_key(alice, bob)
    answers = await api.answers(payload)
    # Each right answer appears once, as one of the choices, and nowhere else in what the client gets.
    text = msgspec.json.encode(payload).decode()
    for answer, question in zip(answers, payload["questions"], strict=True):
        if question["choices"] is not None:
            assert question["choices"].count(answer["value"]) == 1
            assert text.count(answer["value"]) == 1
    signed_body = payload["signedPayload"].split(".")[2]
    import base64

    claims = base64.urlsafe_b64decode(signed_body + "=" * (-len(signed_body) % 4)).decode()
    assert not any(a["value"] in claims for a in answers)


@pytest.mark.asyncio
async def test_failed_attempt_offers_retry_then_cooldown(api_factory, database_url: str) -> None:
    from tests.conftest import make_settings

    api = await api_factory(make_settings(database_url, retry={"cooldown_seconds": 0, "max_attempts_per_day": 2}))
    alice, bob = await _pair(api)
    payload = await api.create_key(alice, bob)
    first = await api.submit(alice, payload["signedPayload"], await api.answers(payload, correct=False))
    outcome = first["data"]["submitConnectionKey"]
    assert outcome["passed"] is False and outcome["unlockState"] == "RETRY_AVAILABLE"
    assert outcome["retryAvailableAt"] is not None and outcome["feedback"]
    # Feedback helps without giving the answers away.
    answers = await api.answers(payload)
    assert not any(a["value"] in " ".join(outcome["feedback"]) for a in answers)

    second_key = await api.create_key(alice, bob)
    second = await api.submit(alice, second_key["signedPayload"], await api.answers(second_key, correct=False))
    assert second["data"]["submitConnectionKey"]["unlockState"] == "COOLDOWN"
    blocked = await api.gql("mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }", alice, t=str(bob))
    error = blocked["errors"][0]
    assert error["extensions"]["code"] == "RATE_LIMITED" and error["extensions"]["retryAfter"] > 3600

    async def cooldown() -> bool:  # alice's own retry state (the conversation row stays LOCKED)
        row = (
            await ConversationRequesterState.select()
            .where(ConversationRequesterState.id == requester_state_id(uuid.UUID(payload["conversationId"]), alice))
            .first()
            .run()
        )
        return row is not None and row["unlock_state"] == "COOLDOWN"

    await api.eventually(cooldown)


@pytest.mark.asyncio
async def test_consumer_is_idempotent(api: Api) -> None:
    alice, bob = await _pair(api)
    payload = await api.create_key(alice, bob)
    await api.submit(alice, payload["signedPayload"], await api.answers(payload))

    async def processed() -> bool:
        return await ProcessedEvent.count().where(ProcessedEvent.consumer == CONSUMER_GROUP).run() == 1

    await api.eventually(processed)
    before = await Conversation.select().first().run()
    events_before = await ConnectionKeyEvent.count().run()
    completed = [e for e in await _envelopes() if e.event_type.value == "QUIZ_COMPLETED"]
    assert len(completed) == 1
    # Redelivery, alone and within a batch, changes nothing.
    assert await api.services.orchestrator.apply(completed[0]) is None
    await api.services.orchestrator.handle(completed * 2)
    assert await Conversation.select().first().run() == before
    assert await ConnectionKeyEvent.count().run() == events_before
    assert await ProcessedEvent.count().where(ProcessedEvent.consumer == CONSUMER_GROUP).run() == 1


async def _envelopes() -> list[EventEnvelope]:
    rows = await ConnectionKeyEvent.select().order_by(ConnectionKeyEvent.sequence).run()
    return [envelope_of(row) for row in rows]


@pytest.mark.asyncio
async def test_concurrent_submissions_commit_together_and_each_counts_once(api: Api) -> None:
    """Submissions arriving together share a commit (group commit); each is still claimed exactly once. The
    duplicate differs from the original (one timing), so it is not a retry of it: PAYLOAD_REPLAYED."""
    pairs = [(uuid.uuid4(), uuid.uuid4()) for _ in range(12)]
    for _, target in pairs:
        await api.upsert_profile(target, "Target")
    payloads = [await api.create_key(requester, target) for requester, target in pairs]
    jobs = []
    for index, ((requester, _), payload) in enumerate(zip(pairs, payloads, strict=True)):
        answers = await api.answers(payload, correct=index % 2 == 0)
        jobs.append(api.submit(requester, payload["signedPayload"], answers))
        other = [{**answer, "elapsedMs": 1501} for answer in answers]
        jobs.append(api.submit(requester, payload["signedPayload"], other))  # another submission in the same burst
    results = await asyncio.gather(*jobs)
    accepted = [r["data"]["submitConnectionKey"] for r in results if "errors" not in r]
    replayed = [r["errors"][0]["extensions"]["code"] for r in results if "errors" in r]
    assert len(accepted) == 12 and replayed == ["PAYLOAD_REPLAYED"] * 12
    assert sorted(r["unlockState"] for r in accepted) == ["RETRY_AVAILABLE"] * 6 + ["UNLOCKED"] * 6
    assert await ConnectionKeyAttempt.count().run() == 12

    async def all_applied() -> bool:
        return await ProcessedEvent.count().where(ProcessedEvent.consumer == CONSUMER_GROUP).run() == 12

    await api.eventually(all_applied)
    states = sorted(r["unlock_state"] for r in await Conversation.select(Conversation.unlock_state).run())
    assert states == ["LOCKED"] * 6 + ["UNLOCKED"] * 6  # a failure sets the requester's own state only
    own = [
        r["unlock_state"]
        for r in await ConversationRequesterState.select(ConversationRequesterState.unlock_state).run()
    ]
    assert own == ["RETRY_AVAILABLE"] * 6
