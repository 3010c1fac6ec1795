"""Moderator tools over REST, on SQLite and PostgreSQL: who may call them, what they show, what an
override does to a conversation (and who hears of it), and that every moderator action is audited."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
import pytest_asyncio
import structlog

from app.db.key_store import AttemptRow
from app.db.tables import AuditLogEntry, ConnectionKeyAttempt, ConnectionKeyEvent, ModerationDecision
from app.domain.field_crypto import is_ciphertext
from app.domain.moderation_rules import PageCursor, encode_cursor
from app.domain.quiz import QuestionKind
from app.domain.scoring import QuestionOutcome
from app.services.unlock_orchestrator import status_channel
from app.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import Api, api_factory  # noqa: F401 - the running-app fixture

pytestmark = pytest.mark.asyncio

MODERATOR_CLAIMS = {"app_metadata": {"roles": ["moderator"]}}
PROBLEM = "application/problem+json"


def moderator_headers(api: Api, user: uuid.UUID | None = None, **claims: Any) -> dict[str, str]:
    return api.headers(user or uuid.uuid4(), extra_claims=claims or MODERATOR_CLAIMS)


async def audit_actions(subject_id: uuid.UUID | None = None) -> list[tuple[str, str]]:
    query = AuditLogEntry.select(AuditLogEntry.action, AuditLogEntry.actor_kind).order_by(AuditLogEntry.sequence)
    if subject_id is not None:
        query = query.where(AuditLogEntry.subject_id == subject_id)
    return [(row["action"], row["actor_kind"]) for row in await query.run()]


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["code"] == code, body
    return body


Start = Callable[[Settings], Awaitable[Api]]


@pytest_asyncio.fixture
async def start(api_factory: Start) -> Start:  # noqa: F811 - the fixture imported above
    """Starts apps with given settings (``api_factory`` under a name that does not shadow the import)."""
    return api_factory


@pytest_asyncio.fixture
async def api(start: Start, database_url: str) -> Api:
    # A long cooldown, so a failed attempt really holds the requester back until a moderator excuses it.
    return await start(make_settings(database_url, retry={"cooldown_seconds": 3600}))


# -- access ------------------------------------------------------------------------------------------


async def test_moderation_needs_the_moderator_role_in_the_roles_claim(api: Api) -> None:
    attempt = uuid.uuid4()
    calls = [
        ("GET", "/moderation/attempts", None),
        ("GET", f"/moderation/attempts/{attempt}", None),
        ("POST", f"/moderation/attempts/{attempt}/override", {"decision": "UNLOCK", "reason": "test"}),
    ]
    user = uuid.uuid4()
    refused = {
        "plain user": api.headers(user),
        "service role": api.headers(user, role="service_role"),
        "moderator scope claim": api.headers(user, extra_claims={"scope": "moderator", "scopes": ["moderator"]}),
        # user_metadata is writable by the user in Supabase: it must never grant anything.
        "user_metadata roles": api.headers(user, extra_claims={"user_metadata": {"roles": ["moderator"]}}),
        "roles as a string": api.headers(user, extra_claims={"app_metadata": {"roles": "moderator"}}),
        "moderator as role claim": api.headers(user, role="moderator"),
    }
    for method, path, body in calls:
        assert_problem(await api.client.request(method, path, json=body), 401, "UNAUTHENTICATED")
        for name, headers in refused.items():
            response = await api.client.request(method, path, json=body, headers=headers)
            assert response.status_code == 403, (name, path, response.text)
            assert_problem(response, 403, "FORBIDDEN")
    ok = await api.client.get("/moderation/attempts", headers=moderator_headers(api))
    assert ok.status_code == 200, ok.text
    # A service-role token that also carries the role is a moderator.
    both = api.headers(user, role="service_role", extra_claims=MODERATOR_CLAIMS)
    assert (await api.client.get("/moderation/attempts", headers=both)).status_code == 200
    assert await ModerationDecision.count().run() == 0  # nothing refused wrote anything


async def test_a_custom_roles_claim_path_and_role(start: Start, database_url: str) -> None:
    api = await start(
        make_settings(database_url, moderation={"roles_claim": "realm_access.roles", "moderator_role": "ck-mod"})
    )
    user = uuid.uuid4()
    default_place = api.headers(user, extra_claims={"app_metadata": {"roles": ["moderator", "ck-mod"]}})
    assert_problem(await api.client.get("/moderation/attempts", headers=default_place), 403, "FORBIDDEN")
    wrong_role = api.headers(user, extra_claims={"realm_access": {"roles": ["moderator"]}})
    assert_problem(await api.client.get("/moderation/attempts", headers=wrong_role), 403, "FORBIDDEN")
    right = api.headers(user, extra_claims={"realm_access": {"roles": ["ck-mod"]}})
    response = await api.client.get("/moderation/attempts", headers=right)
    assert response.status_code == 200, response.text
    assert await audit_actions() == [("moderation.attempts_listed", "moderator")]


# -- listing -----------------------------------------------------------------------------------------


def outcome(flags: tuple[str, ...] = (), scorer: str = "rule.choice") -> QuestionOutcome:
    return QuestionOutcome(str(uuid.uuid4()), QuestionKind.CONSENT, scorer, "1.0.0", 1.0, True, flags=flags)


async def insert_attempts(api: Api, specs: list[dict[str, Any]]) -> list[AttemptRow]:
    rows = []
    for spec in specs:
        outcomes = spec.pop("outcomes", [outcome()])
        rows.append(
            AttemptRow(
                id=uuid.uuid4(),
                connection_key_id=uuid.uuid4(),
                conversation_id=spec.pop("conversation_id", uuid.uuid4()),
                requester_id=spec.pop("requester_id", uuid.uuid4()),
                target_id=spec.pop("target_id", uuid.uuid4()),
                responses="[]",
                total_elapsed_ms=None,
                score=spec.pop("score", 0.5),
                passed=spec.pop("passed", False),
                breakdown=msgspec.json.encode(outcomes).decode(),
                shadow_breakdown="[]",
                experiments="{}",
                feedback="[]",
                unlock_state=spec.pop("unlock_state", "RETRY_AVAILABLE"),
                retry_available_at=None,
                started_at=spec["submitted_at"] - timedelta(minutes=1),
                submitted_at=spec.pop("submitted_at"),
            )
        )
    await api.services.key_store.insert_attempts(rows)
    return rows


async def all_pages(api: Api, headers: dict[str, str], **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await api.client.get("/moderation/attempts", params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


async def test_list_filters_and_pages_without_gaps_or_duplicates(api: Api) -> None:
    base = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    conversation, requester, target = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    specs: list[dict[str, Any]] = []
    for i in range(23):
        # Groups of three share a timestamp (one commit batch): the id must break the tie.
        spec: dict[str, Any] = {"submitted_at": base + timedelta(minutes=i // 3)}
        if i % 2 == 0:
            spec.update(conversation_id=conversation, requester_id=requester)
        if i % 5 == 0:
            spec.update(passed=True, unlock_state="UNLOCKED", score=0.95, target_id=target)
        if i % 4 == 0:
            spec["outcomes"] = [outcome(), outcome(flags=("prompt_injection",))]
        if i % 7 == 0:
            # The flag name as a scorer name: the text pre-filter matches it, the exact check must not.
            spec["outcomes"] = [outcome(scorer="prompt_injection"), outcome(flags=("off_topic",))]
        specs.append(spec)
    rows = await insert_attempts(api, specs)
    newest_first = sorted(rows, key=lambda r: (r.submitted_at, str(r.id)), reverse=True)
    headers = moderator_headers(api)

    pages = await all_pages(api, headers, limit=4)
    assert [len(p) for p in pages] == [4, 4, 4, 4, 4, 3]
    seen = [item["id"] for page in pages for item in page]
    assert seen == [str(r.id) for r in newest_first]  # every row once, in order

    def ids(pages: list[list[dict[str, Any]]]) -> set[str]:
        return {item["id"] for page in pages for item in page}

    def expected(keep: Callable[[int], bool]) -> set[str]:
        return {str(rows[i].id) for i in range(len(rows)) if keep(i)}

    assert ids(await all_pages(api, headers, limit=3, conversationId=str(conversation))) == expected(
        lambda i: i % 2 == 0
    )
    assert ids(await all_pages(api, headers, requesterId=str(requester))) == expected(lambda i: i % 2 == 0)
    assert ids(await all_pages(api, headers, targetId=str(target))) == expected(lambda i: i % 5 == 0)
    assert ids(await all_pages(api, headers, limit=2, passed="true")) == expected(lambda i: i % 5 == 0)
    assert ids(await all_pages(api, headers, passed="false", unlockState="RETRY_AVAILABLE")) == expected(
        lambda i: i % 5 != 0
    )
    injected = await all_pages(api, headers, limit=2, flag="prompt_injection")
    assert ids(injected) == expected(lambda i: i % 4 == 0 and i % 7 != 0)
    assert all(item["flags"] == ["prompt_injection"] for page in injected for item in page)
    assert ids(await all_pages(api, headers, limit=5, flagged="true")) == expected(lambda i: i % 4 == 0 or i % 7 == 0)
    assert ids(await all_pages(api, headers, limit=5, flagged="false")) == expected(lambda i: i % 4 != 0 and i % 7 != 0)
    since, until = base + timedelta(minutes=2), base + timedelta(minutes=5)
    window = await all_pages(api, headers, limit=2, submittedSince=since.isoformat(), submittedUntil=until.isoformat())
    assert ids(window) == expected(lambda i: 2 <= i // 3 < 5)
    both = await all_pages(api, headers, conversationId=str(conversation), passed="true", flag="prompt_injection")
    assert ids(both) == expected(lambda i: i % 2 == 0 and i % 5 == 0 and i % 4 == 0 and i % 7 != 0)

    bad = {
        "conversationId": "not-a-uuid",
        "passed": "perhaps",
        "unlockState": "OPEN",
        "flag": "a b%",
        "submittedSince": "2026-11-01T12:00:00",  # no offset
        "cursor": "bm9wZQ",
        "limit": "0",
    }
    for name, value in bad.items():
        response = await api.client.get("/moderation/attempts", params={name: value}, headers=headers)
        assert_problem(response, 400, "BAD_USER_INPUT")
    for params in (
        {"limit": str(api.settings.moderation.max_page_size + 1)},
        {"submittedSince": until.isoformat(), "submittedUntil": since.isoformat()},
    ):
        assert_problem(
            await api.client.get("/moderation/attempts", params=params, headers=headers), 400, "BAD_USER_INPUT"
        )


async def test_out_of_range_times_are_bad_input_not_a_server_error(api: Api) -> None:
    headers = moderator_headers(api)
    far_past = encode_cursor(PageCursor(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), uuid.uuid4()))
    far_future = encode_cursor(
        PageCursor(datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))), uuid.uuid4())
    )
    for params in (
        {"cursor": far_past},
        {"cursor": far_future},
        {"submittedSince": "0001-01-01T00:00:00+01:00"},
        {"submittedUntil": "9999-12-31T23:00:00-05:00"},
        {"submittedSince": "1999-12-31T23:59:59Z"},
        {"submittedSince": "2026-01-01T00:00:00Z", "submittedUntil": "0001-01-01T00:00:00+01:00"},
    ):
        response = await api.client.get("/moderation/attempts", params=params, headers=headers)
        body = assert_problem(response, 400, "BAD_USER_INPUT")
        assert "2000" in body["detail"] or "cursor" in body["detail"], body
    edges = {"submittedSince": "2000-01-01T00:00:00Z", "submittedUntil": "9999-12-31T23:59:59Z"}
    response = await api.client.get("/moderation/attempts", params=edges, headers=headers)
    assert response.status_code == 200, response.text


# -- a real attempt: detail, override, moderator submission --------------------------------------------


async def failed_attempt(api: Api) -> tuple[uuid.UUID, uuid.UUID, dict[str, Any], dict[str, Any]]:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    payload = await api.create_key(alice, bob)
    result = await api.submit(alice, payload["signedPayload"], await api.answers(payload, correct=False))
    assert "errors" not in result, result
    outcome = result["data"]["submitConnectionKey"]
    assert outcome["passed"] is False

    async def settled() -> bool:  # the unlock consumer has applied the failure
        return await conversation_state(api, alice, payload["conversationId"]) == "RETRY_AVAILABLE"

    await api.eventually(settled)
    return alice, bob, payload, outcome


async def conversation_state(api: Api, user: uuid.UUID, conversation_id: str) -> str:
    result = await api.gql("query($id: ID!) { conversation(id: $id) { unlockState } }", user, id=conversation_id)
    assert "errors" not in result, result
    return result["data"]["conversation"]["unlockState"]


@contextlib.asynccontextmanager
async def status_messages(api: Api, conversation_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """What the connectionKeyStatus subscription hears: the conversation's pub/sub channel."""
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    ready = asyncio.Event()

    async def listen() -> None:
        async with api.services.pubsub.subscribe(status_channel(conversation_id)) as messages:
            ready.set()
            async for message in messages:
                received.put_nowait(msgspec.json.decode(message))

    task = asyncio.create_task(listen())
    await ready.wait()
    try:
        yield received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_detail_shows_the_full_breakdown_and_is_audited(api: Api) -> None:
    alice, _, payload, outcome = await failed_attempt(api)
    attempt_id = outcome["attemptId"]
    headers = moderator_headers(api)
    assert_problem(await api.client.get(f"/moderation/attempts/{uuid.uuid4()}", headers=headers), 404, "NOT_FOUND")
    # Not a UUID: no such route, a typed 404 like any unknown path.
    assert_problem(await api.client.get("/moderation/attempts/nope", headers=headers), 404, "NOT_FOUND")

    response = await api.client.get(f"/moderation/attempts/{attempt_id}", headers=headers)
    assert response.status_code == 200, response.text
    detail = response.json()
    assert detail["attempt"]["id"] == attempt_id and detail["attempt"]["requesterId"] == str(alice)
    assert detail["attempt"]["passed"] is False and detail["attempt"]["submittedBy"] is None
    lines = detail["breakdown"]
    assert len(lines) == len(payload["questions"])
    assert all(line["scorer"] and line["scorerVersion"] == "1.0.0" for line in lines)
    free = next(line for line in lines if line["kind"] == "FREE_RESPONSE")
    assert (free["fallbackFrom"], free["fallbackReason"]) == ("llm.rubric", "scorer_unavailable")
    assert {q["id"] for q in detail["questions"]} == {q["id"] for q in payload["questions"]}
    assert any(q["answerKey"] for q in detail["questions"])
    assert {a["questionId"] for a in detail["answers"]} == {q["id"] for q in payload["questions"]}
    assert detail["decisions"] == [] and detail["conversationState"] == "RETRY_AVAILABLE"
    assert ("moderation.attempt_viewed", "moderator") in await audit_actions(uuid.UUID(attempt_id))


async def test_override_unlocks_retries_and_locks_through_the_unlock_machinery(api: Api) -> None:
    alice, bob, payload, outcome = await failed_attempt(api)
    attempt_id, conversation_id = outcome["attemptId"], payload["conversationId"]
    # The cooldown holds alice back...
    held = await api.gql("mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }", alice, t=str(bob))
    assert held["errors"][0]["extensions"]["code"] == "RATE_LIMITED"

    moderator = uuid.uuid4()
    headers = moderator_headers(api, moderator)
    url = f"/moderation/attempts/{attempt_id}/override"
    async with status_messages(api, conversation_id) as heard:
        # ...until a moderator excuses the failure.
        retry = await api.client.post(url, json={"decision": "ALLOW_RETRY", "reason": "Scorer outage"}, headers=headers)
        assert retry.status_code == 201, retry.text
        assert retry.json()["unlockState"] == "RETRY_AVAILABLE"
        message = await asyncio.wait_for(heard.get(), 5)
        assert (message["unlockState"], message["attemptId"]) == ("RETRY_AVAILABLE", attempt_id)
        again = await api.gql("mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }", alice, t=str(bob))
        assert "errors" not in again, again

        # UNLOCK, with an Idempotency-Key: a retried request replays, it does not decide twice.
        body = {"decision": "UNLOCK", "reason": "Answers were right; the paraphrase scorer missed them."}
        first = await api.client.post(url, json=body, headers={**headers, "Idempotency-Key": "req-1"})
        assert first.status_code == 201, first.text
        decided = first.json()
        assert decided["applied"] is True and decided["unlockState"] == "UNLOCKED"
        assert decided["decision"]["moderatorId"] == str(moderator)
        assert decided["decision"]["previousState"] == "RETRY_AVAILABLE"
        message = await asyncio.wait_for(heard.get(), 5)
        assert (message["unlockState"], message["conversationId"]) == ("UNLOCKED", conversation_id)
        replay = await api.client.post(url, json=body, headers={**headers, "Idempotency-Key": "req-1"})
        assert replay.status_code == 200 and replay.json()["replayed"] is True
        assert replay.json()["decision"]["id"] == decided["decision"]["id"]
        reused = await api.client.post(
            url, json={"decision": "LOCK", "reason": "x" * 3}, headers={**headers, "Idempotency-Key": "req-1"}
        )
        assert_problem(reused, 409, "CONFLICT")
        # Without a key, deciding what is already so changes nothing and stores nothing.
        unchanged = await api.client.post(url, json=body, headers=headers)
        assert unchanged.status_code == 200 and unchanged.json()["applied"] is False
        assert heard.empty()

    for user in (alice, bob):
        assert await conversation_state(api, user, conversation_id) == "UNLOCKED"

    async def unlock_event_published() -> bool:
        rows = await ConnectionKeyEvent.select().where(ConnectionKeyEvent.event_type == "CONVERSATION_UNLOCKED").run()
        return len(rows) == 1 and rows[0]["published_at"] is not None

    await api.eventually(unlock_event_published)  # the relay delivers it to the push consumer too

    # A passed-looking failure cannot be excused twice, and an unlocked conversation has nothing to retry.
    refused = await api.client.post(url, json={"decision": "ALLOW_RETRY", "reason": "again"}, headers=headers)
    assert_problem(refused, 409, "CONFLICT")

    lock = await api.client.post(url, json={"decision": "LOCK", "reason": "Unlock was a mistake"}, headers=headers)
    assert lock.status_code == 201 and lock.json()["unlockState"] == "LOCKED"
    assert await conversation_state(api, bob, conversation_id) == "LOCKED"
    locked_events = await ConnectionKeyEvent.count().where(ConnectionKeyEvent.event_type == "CONVERSATION_LOCKED").run()
    assert locked_events == 1

    decisions = await ModerationDecision.select().order_by(ModerationDecision.decided_at).run()
    assert [d["decision"] for d in decisions] == ["ALLOW_RETRY", "UNLOCK", "LOCK"]
    assert all(d["moderator_id"] == moderator for d in decisions)
    detail = (await api.client.get(f"/moderation/attempts/{attempt_id}", headers=headers)).json()
    assert [d["decision"] for d in detail["decisions"]] == ["ALLOW_RETRY", "UNLOCK", "LOCK"]
    assert detail["conversationState"] == "LOCKED"
    actions = await audit_actions(uuid.UUID(attempt_id))
    assert actions.count(("moderation.override", "moderator")) == 3
    assert ("moderation.override_unchanged", "moderator") in actions


async def test_a_moderator_may_not_override_or_read_an_attempt_in_their_own_conversation(api: Api) -> None:
    alice, bob, payload, outcome = await failed_attempt(api)
    attempt_id, conversation_id = outcome["attemptId"], payload["conversationId"]
    url = f"/moderation/attempts/{attempt_id}/override"
    audit_before = await AuditLogEntry.count().run()
    for participant in (alice, bob):  # the requester and the target alike
        headers = moderator_headers(api, participant)
        for decision in ("UNLOCK", "ALLOW_RETRY", "LOCK"):
            for extra in ({}, {"Idempotency-Key": f"own-{decision}"}):
                response = await api.client.post(
                    url, json={"decision": decision, "reason": "my own"}, headers={**headers, **extra}
                )
                body = assert_problem(response, 403, "FORBIDDEN")
                assert "own conversation" in body["detail"], body
        detail = await api.client.get(f"/moderation/attempts/{attempt_id}", headers=headers)
        assert "own conversation" in assert_problem(detail, 403, "FORBIDDEN")["detail"]
    assert await ModerationDecision.count().run() == 0
    assert await AuditLogEntry.count().run() == audit_before
    assert await conversation_state(api, alice, conversation_id) == "RETRY_AVAILABLE"
    # Anyone else with the role still may.
    other = moderator_headers(api)
    unlocked = await api.client.post(url, json={"decision": "UNLOCK", "reason": "scorer missed it"}, headers=other)
    assert unlocked.status_code == 201, unlocked.text
    assert (await api.client.get(f"/moderation/attempts/{attempt_id}", headers=other)).status_code == 200


async def test_bad_overrides_are_refused_and_write_nothing(api: Api) -> None:
    _, _, payload, outcome = await failed_attempt(api)
    url = f"/moderation/attempts/{outcome['attemptId']}/override"
    headers = moderator_headers(api)
    events_before = await ConnectionKeyEvent.count().run()
    audit_before = await AuditLogEntry.count().run()
    for body in (
        {"decision": "DELETE", "reason": "nope"},
        {"decision": "unlock", "reason": "lower case"},
        {"decision": "UNLOCK"},
        {"decision": "UNLOCK", "reason": ""},
        {"decision": "UNLOCK", "reason": "   \n "},
        {"decision": "UNLOCK", "reason": "x" * (api.settings.moderation.max_reason_chars + 1)},
        {"decision": "UNLOCK", "reason": "x" * 20_000},
        {"decision": "UNLOCK", "reason": "hidden\u202etext"},
        {"decision": "UNLOCK", "reason": "ok", "moderatorId": str(uuid.uuid4())},
        {"decision": "UNLOCK", "reason": 42},
    ):
        assert_problem(await api.client.post(url, json=body, headers=headers), 400, "BAD_USER_INPUT")
    bad_key = {**headers, "Idempotency-Key": "has space"}
    response = await api.client.post(url, json={"decision": "UNLOCK", "reason": "ok"}, headers=bad_key)
    assert_problem(response, 400, "BAD_USER_INPUT")
    missing = await api.client.post(
        f"/moderation/attempts/{uuid.uuid4()}/override", json={"decision": "UNLOCK", "reason": "ok"}, headers=headers
    )
    assert_problem(missing, 404, "NOT_FOUND")
    assert await ModerationDecision.count().run() == 0
    assert await ConnectionKeyEvent.count().run() == events_before
    assert await AuditLogEntry.count().run() == audit_before
    assert payload  # the attempt itself is untouched:
    assert (await ConnectionKeyAttempt.select().first().run())["passed"] is False


async def test_the_reason_never_reaches_the_logs(start: Start, database_url: str) -> None:
    api = await start(make_settings(database_url, logging={"level": "DEBUG"}))  # every log line counts
    _, _, _, outcome = await failed_attempt(api)
    secret = f"reason-{uuid.uuid4().hex} mentions Alice's phone 555-0100"
    with structlog.testing.capture_logs() as logs:
        response = await api.client.post(
            f"/moderation/attempts/{outcome['attemptId']}/override",
            json={"decision": "UNLOCK", "reason": secret},
            headers=moderator_headers(api),
        )
    assert response.status_code == 201, response.text
    assert any(entry["event"] == "moderation override" for entry in logs)
    assert secret not in repr(logs) and "555-0100" not in repr(logs)
    stored = await ModerationDecision.select(ModerationDecision.reason).first().run()
    assert is_ciphertext(stored["reason"]) and "555-0100" not in stored["reason"]  # sealed at rest
    assert response.json()["decision"]["reason"] == secret
    audit_rows = await AuditLogEntry.select().run()
    assert secret not in repr(audit_rows)  # the audit log holds only a keyed digest of the change


async def test_a_moderator_may_submit_for_the_requester_and_it_is_recorded(api: Api) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    payload = await api.create_key(alice, bob)
    answers = await api.answers(payload)
    url = f"/connection-keys/{payload['id']}/responses"
    body = {"signedPayload": payload["signedPayload"], "answers": answers}
    # Someone else without the role may not.
    assert_problem(await api.client.post(url, json=body, headers=api.headers(uuid.uuid4())), 403, "FORBIDDEN")
    moderator = uuid.uuid4()
    response = await api.client.post(url, json=body, headers=moderator_headers(api, moderator))
    assert response.status_code == 201, response.text
    attempt_id = uuid.UUID(response.json()["attemptId"])
    row = await ConnectionKeyAttempt.select().where(ConnectionKeyAttempt.id == attempt_id).first().run()
    assert row["requester_id"] == alice and row["submitted_by"] == moderator
    assert await audit_actions(attempt_id) == [("moderation.submitted", "moderator")]
    listed = (await api.client.get("/moderation/attempts", headers=moderator_headers(api))).json()["items"]
    assert [(i["id"], i["submittedBy"]) for i in listed] == [(str(attempt_id), str(moderator))]
    # The same request again (a lost response) gets the recorded result and records nothing new.
    again = await api.client.post(url, json=body, headers=moderator_headers(api, moderator))
    assert again.status_code == 201 and again.json()["attemptId"] == str(attempt_id), again.text
    assert await ConnectionKeyAttempt.count().where(ConnectionKeyAttempt.connection_key_id == payload["id"]).run() == 1
    # Single use still holds for a moderator: other answers, or another moderator, are a replay.
    other = {**body, "answers": [{**answers[0], "value": "something else entirely"}, *answers[1:]]}
    assert_problem(
        await api.client.post(url, json=other, headers=moderator_headers(api, moderator)), 409, "PAYLOAD_REPLAYED"
    )
    assert_problem(await api.client.post(url, json=body, headers=moderator_headers(api)), 409, "PAYLOAD_REPLAYED")


async def test_a_requester_who_is_a_moderator_submits_as_themselves(api: Api) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    payload = await api.create_key(alice, bob)
    body = {"signedPayload": payload["signedPayload"], "answers": await api.answers(payload)}
    response = await api.client.post(
        f"/connection-keys/{payload['id']}/responses", json=body, headers=moderator_headers(api, alice)
    )
    assert response.status_code == 201, response.text
    row = await ConnectionKeyAttempt.select().first().run()
    assert row["submitted_by"] is None
    assert await audit_actions(row["id"]) == []


async def test_a_moderator_may_not_submit_a_quiz_about_themselves(api: Api) -> None:
    """The target knows every answer to a quiz about themselves: as a moderator they may not submit it for
    the requester. Nothing is written."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    payload = await api.create_key(alice, bob)
    body = {"signedPayload": payload["signedPayload"], "answers": await api.answers(payload)}
    url = f"/connection-keys/{payload['id']}/responses"
    assert_problem(await api.client.post(url, json=body, headers=moderator_headers(api, bob)), 403, "FORBIDDEN")
    assert await ConnectionKeyAttempt.count() == 0
    # Another moderator still may.
    assert (await api.client.post(url, json=body, headers=moderator_headers(api))).status_code == 201
