"""A moderator's LOCK holds until a moderator lifts it: no new quiz for the pair, and a pass arriving
after it (in flight, redelivered, or replayed by the reconciler) does not unlock. On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.db.key_store import KeyStatus
from app.db.outbox_store import new_envelope
from app.db.tables import ConnectionKey, ConnectionKeyAttempt
from app.domain.events import EventType, QuizCompleted
from app.domain.moderation_rules import OverrideDecision, lock_covers
from app.domain.quiz import UnlockState
from app.services.reconciler import Reconciler
from tests.integration.conftest import Api
from tests.integration.test_event_faults import insert_passed_attempt
from tests.security.test_moderation import (  # noqa: F401 - fixtures
    api,
    api_factory,
    assert_problem,
    conversation_state,
    moderator_headers,
    start,
)

pytestmark = pytest.mark.asyncio

CREATE = "mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }"


async def test_a_lock_blocks_new_quizzes_and_later_passes_until_lifted(api: Api) -> None:  # noqa: F811
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    payload = await api.create_key(alice, bob)
    result = await api.submit(alice, payload["signedPayload"], await api.answers(payload))
    outcome = result["data"]["submitConnectionKey"]
    assert outcome["passed"] is True
    conversation_id = payload["conversationId"]

    async def unlocked() -> bool:
        return await conversation_state(api, alice, conversation_id) == "UNLOCKED"

    await api.eventually(unlocked)
    headers = moderator_headers(api)
    url = f"/moderation/attempts/{outcome['attemptId']}/override"
    lock = await api.client.post(url, json={"decision": "LOCK", "reason": "Won by prompt injection"}, headers=headers)
    assert lock.status_code == 201 and lock.json()["unlockState"] == "LOCKED", lock.text

    # No new quiz for the pair, from either side, while the lock holds.
    for requester, target in ((alice, bob), (bob, alice)):
        refused = await api.gql(CREATE, requester, t=str(target))
        assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN", refused

    # A pass that arrives after the LOCK (an attempt in flight, a redelivery) does not unlock...
    services = api.services
    conversation = uuid.UUID(conversation_id)
    late = QuizCompleted(
        attempt_id=uuid.uuid4(),
        key_id=uuid.uuid4(),
        conversation_id=conversation,
        requester_id=alice,
        target_id=bob,
        score=1.0,
        passed=True,
        unlock_state=UnlockState.UNLOCKED,
        retry_available_at=None,
        completed_at=services.clock(),
    )
    status = await services.orchestrator.apply(
        new_envelope(EventType.QUIZ_COMPLETED, conversation, late, services.clock())
    )
    assert status is not None and status.unlock_state is UnlockState.LOCKED
    # ...nor does the reconciler replay the revoked pass as a lost unlock.
    later = services.clock() + timedelta(hours=1)
    reconciler = Reconciler(
        services.settings.outbox,
        services.relay._store,
        services.profile_store,
        services.orchestrator,
        services.relay,
        lambda: later,
    )
    assert (await reconciler.run_once()).unlocked_attempts == []
    for user in (alice, bob):
        assert await conversation_state(api, user, conversation_id) == "LOCKED"

    # ALLOW_RETRY lifts the lock (documented in moderation_rules): alice may take a new quiz.
    lifted = await api.client.post(url, json={"decision": "ALLOW_RETRY", "reason": "Lock lifted"}, headers=headers)
    assert lifted.status_code == 201 and lifted.json()["unlockState"] == "RETRY_AVAILABLE", lifted.text
    again = await api.gql(CREATE, alice, t=str(bob))
    assert "errors" not in again, again
    # Still not unlocked: lifting the lock is not an unlock, and the revoked pass stays revoked.
    assert (await reconciler.run_once()).unlocked_attempts == []
    assert await conversation_state(api, bob, conversation_id) == "LOCKED"


async def test_a_lock_covers_passes_decided_after_it_or_taken_while_it_held() -> None:
    t = [datetime(2026, 12, 3, 12, minute, tzinfo=UTC) for minute in range(10)]
    lock, lift, unlock = OverrideDecision.LOCK, OverrideDecision.ALLOW_RETRY, OverrideDecision.UNLOCK
    assert not lock_covers([], t[5])
    assert lock_covers([(lock, t[3])], t[2])  # revoked: the LOCK came after the pass
    assert lock_covers([(lock, t[3])], t[3])
    assert lock_covers([(lock, t[3])], t[4])  # taken under the lock, which still holds
    assert lock_covers([(lift, t[6]), (lock, t[3])], t[5])  # taken under the lock, lifted only later
    assert not lock_covers([(lock, t[3]), (lift, t[4])], t[5])  # taken after the lift
    assert not lock_covers([(lock, t[3]), (unlock, t[4])], t[4])
    assert lock_covers([(lock, t[3]), (lift, t[4]), (lock, t[6])], t[5])  # locked again since: revoked


async def test_a_quiz_issued_before_a_lock_is_closed_and_no_pass_under_the_lock_unlocks_after_the_lift(
    api: Api,  # noqa: F811
) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    bobs = await api.create_key(bob, alice)  # issued before the lock, the other way round
    payload = await api.create_key(alice, bob)
    result = await api.submit(alice, payload["signedPayload"], await api.answers(payload))
    assert result["data"]["submitConnectionKey"]["passed"] is True
    attempt_id = result["data"]["submitConnectionKey"]["attemptId"]
    conversation_id = payload["conversationId"]
    conversation = uuid.UUID(conversation_id)

    async def unlocked() -> bool:
        return await conversation_state(api, alice, conversation_id) == "UNLOCKED"

    await api.eventually(unlocked)
    headers = moderator_headers(api)
    url = f"/moderation/attempts/{attempt_id}/override"
    lock = await api.client.post(url, json={"decision": "LOCK", "reason": "Won by prompt injection"}, headers=headers)
    assert lock.status_code == 201, lock.text

    # Bob's quiz, issued before the lock, is closed by it: refused, typed, and nothing recorded.
    bobs_answers = await api.answers(bobs)
    refused = await api.submit(bob, bobs["signedPayload"], bobs_answers)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN", refused
    key_id = uuid.UUID(bobs["id"])
    assert await ConnectionKeyAttempt.count().where(ConnectionKeyAttempt.connection_key_id == key_id).run() == 0
    row = await ConnectionKey.select(ConnectionKey.status).where(ConnectionKey.id == key_id).first().run()
    assert row is not None and row["status"] == KeyStatus.SUPERSEDED

    # A pass taken while the lock held (a submit that read the conversation just before the LOCK
    # committed), its QUIZ_COMPLETED still on its way when a moderator lifts the lock.
    services = api.services
    under_lock = await insert_passed_attempt(services, conversation, bob, submitted=services.clock())
    lifted = await api.client.post(url, json={"decision": "ALLOW_RETRY", "reason": "Lock lifted"}, headers=headers)
    assert lifted.status_code == 201, lifted.text

    later = services.clock() + timedelta(hours=1)
    reconciler = Reconciler(
        services.settings.outbox,
        services.relay._store,
        services.profile_store,
        services.orchestrator,
        services.relay,
        lambda: later,
    )
    assert (await reconciler.run_once()).unlocked_attempts == []  # not a lost unlock: taken under the lock
    late = QuizCompleted(
        attempt_id=under_lock.id,
        key_id=under_lock.connection_key_id,
        conversation_id=conversation,
        requester_id=bob,
        target_id=alice,
        score=under_lock.score,
        passed=True,
        unlock_state=UnlockState.UNLOCKED,
        retry_available_at=None,
        completed_at=under_lock.submitted_at,
    )
    status = await services.orchestrator.apply(
        new_envelope(EventType.QUIZ_COMPLETED, conversation, late, services.clock())
    )
    assert status is not None and status.unlock_state is UnlockState.LOCKED
    # Bob's old quiz stays closed after the lift (superseded): a new quiz is the way on.
    again = await api.submit(bob, bobs["signedPayload"], bobs_answers)
    assert again["errors"][0]["extensions"]["code"] == "CONFLICT", again
    record = await services.profile_store.get_conversation(conversation)
    assert record is not None and record.unlock_state is UnlockState.LOCKED
    assert await conversation_state(api, bob, conversation_id) == "LOCKED"

    # Lifting is not forever blocking: a pass taken after the lift unlocks as usual.
    fresh = await api.create_key(bob, alice)
    passed = await api.submit(bob, fresh["signedPayload"], await api.answers(fresh))
    assert passed["data"]["submitConnectionKey"]["passed"] is True, passed
    await api.eventually(unlocked)
