"""Each bad input gets its typed error and writes nothing (no attempt, no outbox event, no key)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from app.db.tables import ConnectionKey, ConnectionKeyAttempt, ConnectionKeyEvent
from app.domain.signing import PayloadSigner
from tests.integration.conftest import Api

PROBLEM = "application/problem+json"


async def _counts() -> tuple[int, int, int]:
    return (
        await ConnectionKey.count().run(),
        await ConnectionKeyAttempt.count().run(),
        await ConnectionKeyEvent.count().run(),
    )


@pytest_asyncio.fixture
async def quiz(api: Api) -> dict:
    alice, bob, carol = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for user, name in ((alice, "Alice"), (bob, "Bob"), (carol, "Carol")):
        await api.upsert_profile(user, name)
    payload = await api.create_key(alice, bob)
    return {"alice": alice, "bob": bob, "carol": carol, "payload": payload, "answers": await api.answers(payload)}


def _code(result: dict) -> str:
    assert result.get("errors"), result
    return result["errors"][0]["extensions"]["code"]


def _tamper(signed: str) -> str:
    version, kid, body, sig = signed.split(".")
    claims = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).replace(b'"issued_at":', b'"issued_at":1')
    return ".".join([version, kid, base64.urlsafe_b64encode(claims).rstrip(b"=").decode(), sig])


@pytest.mark.asyncio
async def test_bad_submissions_get_typed_errors_and_write_nothing(api: Api, quiz: dict) -> None:
    alice, carol, payload, answers = quiz["alice"], quiz["carol"], quiz["payload"], quiz["answers"]
    signed = payload["signedPayload"]
    before = await _counts()
    signer = PayloadSigner(api.settings.signing.keys, api.settings.signing.active_key_id, 300)
    ids = [uuid.UUID(q["id"]) for q in payload["questions"]]
    stale = signer.sign(
        signer.claims_for(
            key_id=uuid.UUID(payload["id"]),
            conversation_id=uuid.UUID(payload["conversationId"]),
            requester_id=alice,
            target_id=quiz["bob"],
            question_ids=ids,
            now=datetime.now(UTC) - timedelta(minutes=6),
        )
    )
    other_key = PayloadSigner({"rogue": "x" * 40}, "rogue", 300).sign(
        signer.claims_for(
            key_id=uuid.UUID(payload["id"]),
            conversation_id=uuid.UUID(payload["conversationId"]),
            requester_id=alice,
            target_id=quiz["bob"],
            question_ids=ids,
            now=datetime.now(UTC),
        )
    )
    cases = [
        (alice, signed[:-4] + ("AAAA" if not signed.endswith("AAAA") else "BBBB"), answers, "PAYLOAD_INVALID"),
        (alice, _tamper(signed), answers, "PAYLOAD_INVALID"),
        (alice, other_key, answers, "PAYLOAD_INVALID"),
        (alice, "not-a-payload", answers, "PAYLOAD_INVALID"),
        (alice, stale, answers, "PAYLOAD_EXPIRED"),
        (carol, signed, answers, "FORBIDDEN"),
        (alice, signed, answers[:-1], "BAD_USER_INPUT"),
        (alice, signed, [*answers, answers[0]], "BAD_USER_INPUT"),
        (alice, signed, [*answers[:-1], {**answers[-1], "questionId": str(uuid.uuid4())}], "BAD_USER_INPUT"),
        (alice, signed, [{**answers[0], "questionId": "not-a-uuid"}, *answers[1:]], "BAD_USER_INPUT"),
        (alice, signed, [{**answers[0], "elapsedMs": -5}, *answers[1:]], "BAD_USER_INPUT"),
        (alice, signed, [{**answers[0], "value": "x" * 5000}, *answers[1:]], "BAD_USER_INPUT"),
    ]
    for user, signed_payload, given, code in cases:
        assert _code(await api.submit(user, signed_payload, given)) == code, (code, given)
    assert await _counts() == before
    # After all that, the genuine submission still works once.
    assert (await api.submit(alice, signed, answers))["data"]["submitConnectionKey"]["passed"] is True


@pytest.mark.asyncio
async def test_bad_tokens_are_unauthenticated(api: Api, quiz: dict) -> None:
    query = "{ me { displayName } }"
    expired = api.token(quiz["alice"], ttl_seconds=-120)
    wrong_secret = api.token(quiz["alice"]).rsplit(".", 1)[0] + ".c2lnbmF0dXJl"
    for headers in (
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": f"Bearer {wrong_secret}"},
        {"Authorization": "Basic YWxhZGRpbjpvcGVu"},
    ):
        response = await api.client.post("/graphql", json={"query": query}, headers=headers)
        assert _code(response.json()) == "UNAUTHENTICATED"
        rest = await api.client.post("/connection-keys", json={"targetUserId": str(quiz["bob"])}, headers=headers)
        assert rest.status_code == 401 and rest.headers["content-type"].startswith(PROBLEM)
        assert rest.json()["code"] == "UNAUTHENTICATED"


@pytest.mark.asyncio
async def test_bad_create_requests(api: Api, quiz: dict) -> None:
    alice = quiz["alice"]
    before = await _counts()
    create = "mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }"
    assert _code(await api.gql(create, alice, t=str(alice))) == "BAD_USER_INPUT"
    assert _code(await api.gql(create, alice, t=str(uuid.uuid4()))) == "NOT_FOUND"
    assert _code(await api.gql(create, alice, t="nope")) == "BAD_USER_INPUT"
    assert (
        _code(await api.gql("mutation { createConnectionKey(targetUserId: 5, extra: 1) { id } }", alice))
        == "BAD_USER_INPUT"
    )
    assert await _counts() == before

    headers = {**api.headers(alice), "content-type": "application/json"}
    bad_bodies = [
        b"{not json",
        b'{"targetUserId": "%s", "surprise": 1}' % str(quiz["bob"]).encode(),
        b'{"targetUserId": 42}',
        b"[]",
        b'{"targetUserId": "%s"}' % str(alice).encode(),
    ]
    for body in bad_bodies:
        response = await api.client.post("/connection-keys", content=body, headers=headers)
        assert response.status_code == 400, (body, response.text)
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.json()["code"] == "BAD_USER_INPUT"
    huge = b'{"targetUserId": "' + b"a" * (api.settings.server.max_body_bytes + 10) + b'"}'
    response = await api.client.post("/connection-keys", content=huge, headers=headers)
    assert response.status_code == 413 and response.json()["code"] == "BAD_USER_INPUT"
    huge_graphql = await api.client.post("/graphql", content=huge, headers=headers)
    assert huge_graphql.status_code == 413
    missing = await api.client.post("/connection-keys", json={"targetUserId": str(uuid.uuid4())}, headers=headers)
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    nowhere = await api.client.get("/no-such-route")
    assert nowhere.status_code == 404 and nowhere.headers["content-type"].startswith(PROBLEM)
    assert await _counts() == before


@pytest.mark.asyncio
async def test_target_without_profile_and_profile_validation(api: Api, quiz: dict) -> None:
    stranger = uuid.uuid4()
    result = await api.gql(
        "mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }", quiz["alice"], t=str(stranger)
    )
    assert _code(result) == "NOT_FOUND"
    upsert = "mutation($input: ProfileInput!) { upsertMyProfile(input: $input) { userId } }"
    for profile in (
        {"displayName": "", "prompts": [], "consentPreferences": []},
        {"displayName": "   ", "prompts": [], "consentPreferences": []},
        {"displayName": "A", "prompts": [{"question": "q", "answer": "a" * 1001}], "consentPreferences": []},
        {"displayName": "A", "prompts": [], "consentPreferences": [], "locale": "not a locale!"},
        {"displayName": "A", "prompts": [{"question": "q", "answer": "a"}] * 11, "consentPreferences": []},
    ):
        assert _code(await api.gql(upsert, stranger, input=profile)) == "BAD_USER_INPUT", profile
    assert (await api.gql("{ me { userId } }", stranger))["data"]["me"] is None


@pytest.mark.asyncio
async def test_parallel_double_submit_records_one_attempt(api: Api, quiz: dict) -> None:
    alice, payload, answers = quiz["alice"], quiz["payload"], quiz["answers"]
    results = await asyncio.gather(*(api.submit(alice, payload["signedPayload"], answers) for _ in range(4)))
    # The first one is scored; an identical copy sent while it is in flight is told to retry shortly
    # (UNAVAILABLE + retryAfter), one arriving after it committed gets the recorded result.
    passed = [r["data"]["submitConnectionKey"]["attemptId"] for r in results if "errors" not in r]
    waiting = [r["errors"][0]["extensions"] for r in results if "errors" in r]
    assert len(set(passed)) == 1 and len(passed) + len(waiting) == 4
    assert all(e["code"] == "UNAVAILABLE" and e["retryAfter"] >= 1 for e in waiting)
    assert await ConnectionKeyAttempt.count().run() == 1
    url = f"/connection-keys/{payload['id']}/responses"
    body = {"signedPayload": payload["signedPayload"], "answers": answers}
    rest = await api.client.post(url, json=body, headers=api.headers(alice))
    assert rest.status_code == 201 and rest.json()["attemptId"] == passed[0]
    other = {**body, "answers": [{**answers[0], "value": answers[0]["value"] + " indeed"}, *answers[1:]]}
    rest = await api.client.post(url, json=other, headers=api.headers(alice))
    assert rest.status_code == 409 and rest.json()["code"] == "PAYLOAD_REPLAYED"
    assert await ConnectionKeyAttempt.count().run() == 1


@pytest.mark.asyncio
async def test_rest_submission_to_the_wrong_key_and_superseded_keys(api: Api, quiz: dict) -> None:
    alice, bob, payload = quiz["alice"], quiz["bob"], quiz["payload"]
    body = {"signedPayload": payload["signedPayload"], "answers": quiz["answers"]}
    wrong = await api.client.post(f"/connection-keys/{uuid.uuid4()}/responses", json=body, headers=api.headers(alice))
    assert wrong.status_code == 400 and wrong.json()["code"] == "BAD_USER_INPUT"
    newer = await api.create_key(alice, bob)
    old = await api.submit(alice, payload["signedPayload"], quiz["answers"])
    assert _code(old) == "CONFLICT"
    keys = await api.gql("{ myConnectionKeys { id questions { id } } }", alice)
    assert [k["id"] for k in keys["data"]["myConnectionKeys"]] == [newer["id"]]
    assert await ConnectionKeyAttempt.count().run() == 0


@pytest.mark.asyncio
async def test_profiles_over_rest_need_the_service_role_for_others(api: Api, quiz: dict) -> None:
    someone = uuid.uuid4()
    body = {
        "displayName": "Synced",
        "prompts": [{"question": "q?", "answer": "an answer"}],
        "consentPreferences": [],
        "locale": "en-GB",
        "demographicSegments": {"ageBand": "25-34"},
    }
    forbidden = await api.client.put(f"/profiles/{someone}", json=body, headers=api.headers(quiz["alice"]))
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "FORBIDDEN"
    service = api.headers(uuid.uuid4(), role="service_role")
    synced = await api.client.put(f"/profiles/{someone}", json=body, headers=service)
    assert synced.status_code == 200, synced.text
    assert synced.json()["displayName"] == "Synced" and synced.json()["demographicSegments"] == {"ageBand": "25-34"}
    own = await api.client.put(f"/profiles/{quiz['alice']}", json=body, headers=api.headers(quiz["alice"]))
    assert own.status_code == 200
    acting = await api.client.post(
        "/connection-keys", json={"targetUserId": str(quiz["bob"]), "requesterUserId": str(someone)}, headers=service
    )
    assert acting.status_code == 201
    not_allowed = await api.client.post(
        "/connection-keys",
        json={"targetUserId": str(quiz["bob"]), "requesterUserId": str(someone)},
        headers=api.headers(quiz["carol"]),
    )
    assert not_allowed.status_code == 403


@pytest.mark.asyncio
async def test_conversations_are_visible_to_participants_only(api: Api, quiz: dict) -> None:
    query = "query($id: ID!) { conversation(id: $id) { unlockState } }"
    conversation_id = quiz["payload"]["conversationId"]
    assert (await api.gql(query, quiz["bob"], id=conversation_id))["data"]["conversation"]["unlockState"] == "LOCKED"
    assert _code(await api.gql(query, quiz["carol"], id=conversation_id)) == "FORBIDDEN"
    assert (await api.gql(query, quiz["carol"], id=str(uuid.uuid4())))["data"]["conversation"] is None


@pytest.mark.asyncio
async def test_malformed_graphql_requests_get_typed_errors(api: Api) -> None:
    headers = {"content-type": "application/json"}
    for body in (b"{bad", b"[]", b'{"query": 5}', b'{"query": "{ me { userId } }", "variables": "x"}'):
        response = await api.client.post("/graphql", content=body, headers=headers)
        assert response.status_code == 400, body
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    get = await api.client.get("/graphql", params={"query": "{ me { userId } }"})
    assert get.status_code in (400, 405)
    assert (await api.client.get("/graphql", headers={"accept": "text/html"})).status_code != 200  # no GraphiQL


@pytest.mark.asyncio
async def test_unknown_graphql_input_fields_are_typed_errors(api: Api) -> None:
    user = uuid.uuid4()
    mutation = "mutation($input: ProfileInput!) { upsertMyProfile(input: $input) { displayName } }"
    profile = {"displayName": "Ann", "prompts": [], "consentPreferences": [], "demographicSegments": {"age": "30"}}
    body = await api.gql(mutation, user, input=profile)
    assert body.get("data") is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
    literal = (
        'mutation { upsertMyProfile(input: {displayName: "Ann", prompts: [], consentPreferences: [], nope: 1})'
        " { displayName } }"
    )
    body = await api.gql(literal, user)
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
