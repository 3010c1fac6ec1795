"""A moderator's LOCK holds until a moderator lifts it: no new quiz for the pair, and a pass arriving
after it (in flight, redelivered, or replayed by the reconciler) does not unlock. On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from app.db.outbox_store import new_envelope
from app.domain.events import EventType, QuizCompleted
from app.domain.quiz import UnlockState
from app.services.reconciler import Reconciler
from tests.integration.conftest import Api
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
