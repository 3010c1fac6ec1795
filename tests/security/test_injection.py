"""Injection strings (SQL, GraphQL, NUL bytes, control and huge unicode text) in every text field of every
input, over GraphQL (as variables and inlined in the document) and REST: each is either stored and read
back verbatim or refused with a typed 400, never a 500, and the database is intact afterwards."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import Any

import pytest

from app.db.tables import ConnectionKey, DeviceToken, Profile
from tests.integration.conftest import Api

PROBLEM = "application/problem+json"
NASTY = [
    "'; DROP TABLE profiles; --",
    '" OR 1=1 --',
    "1' UNION SELECT id, user_id FROM profiles --",
    "$$; DELETE FROM connection_keys; $$",
    "\\'; SELECT pg_sleep(5); --",
    '"} } mutation { upsertMyProfile(input: {displayName: "pwned"}) { userId } } #',
    "{ __schema { types { name } } }",
    "query { me { userId } } ",
    "nul\x00byte",
    "\x00",
    "\u202eevil\u202c \ufeff \u200b\u0007",
    "ℌ𝔢𝔩𝔩𝔬 👩🏽‍💻" * 500,
    "%s%s%s%n {0} ${7*7} {{7*7}}",
    "<script>alert(1)</script>",
]
MUTATION = (
    "mutation { upsertMyProfile(input: {displayName: $NAME, prompts: [], consentPreferences: []}) { displayName } }"
)
PROFILE_FIELDS = ("displayName", "bio", "locale", "question", "answer", "topic", "statement")
UPSERT = """mutation($input: ProfileInput!) { upsertMyProfile(input: $input) {
  displayName bio locale prompts { question answer } consentPreferences { topic statement } } }"""


def _profile(field: str, value: str) -> dict[str, Any]:
    profile = {
        "displayName": "Ann",
        "bio": "bio",
        "locale": "en",
        "prompts": [{"question": "q", "answer": "a"}],
        "consentPreferences": [{"topic": "t", "statement": "s"}],
    }
    if field in ("question", "answer"):
        profile["prompts"][0][field] = value
    elif field in ("topic", "statement"):
        profile["consentPreferences"][0][field] = value
    else:
        profile[field] = value
    return profile


def _stored(profile: dict[str, Any], field: str) -> Any:
    if field in ("question", "answer"):
        return profile["prompts"][0][field]
    if field in ("topic", "statement"):
        return profile["consentPreferences"][0][field]
    return profile[field]


def _graphql_ok_or_typed(result: dict[str, Any]) -> bool:
    """True when the operation succeeded; a failure must be typed and not internal."""
    if not result.get("errors"):
        return True
    codes = {e.get("extensions", {}).get("code") for e in result["errors"]}
    assert codes and codes <= {"BAD_USER_INPUT", "NOT_FOUND", "FORBIDDEN", "PAYLOAD_INVALID"}, result
    return False


@pytest.mark.asyncio
async def test_profile_fields_over_graphql_and_rest(api: Api) -> None:
    user = uuid.uuid4()
    for value in NASTY:
        for field in PROFILE_FIELDS:
            result = await api.gql(UPSERT, user, input=_profile(field, value))
            if _graphql_ok_or_typed(result):
                assert _stored(result["data"]["upsertMyProfile"], field) == value, (field, value)
                me = await api.gql(
                    UPSERT.replace("mutation($input: ProfileInput!) { upsertMyProfile(input: $input)", "{ me"), user
                )
                assert _stored(me["data"]["me"], field) == value, (field, value)
            response = await api.client.put(f"/profiles/{user}", json=_profile(field, value), headers=api.headers(user))
            assert response.status_code in (200, 400), (field, value, response.status_code, response.text)
            if response.status_code == 400:
                assert response.headers["content-type"].startswith(PROBLEM)
                assert response.json()["code"] == "BAD_USER_INPUT"
            else:
                assert _stored(response.json(), field) == value
    assert await Profile.count().run() == 1


@pytest.mark.asyncio
async def test_inlined_in_the_graphql_document(api: Api) -> None:
    user = uuid.uuid4()
    for value in NASTY:
        literal = json.dumps(value)  # a GraphQL string literal with JSON escapes
        document = MUTATION.replace("$NAME", literal)
        result = await api.gql(document, user)
        if _graphql_ok_or_typed(result):
            assert result["data"]["upsertMyProfile"]["displayName"] == value
        # Unescaped, the string breaks out of the literal: a syntax or validation error, never execution.
        raw = MUTATION.replace("$NAME", f'"{value}"')
        response = await api.client.post("/graphql", json={"query": raw}, headers=api.headers(user))
        assert response.status_code == 200
        result = response.json()
        if _graphql_ok_or_typed(result):
            assert result["data"]["upsertMyProfile"]["displayName"] == value
    stored = await Profile.select(Profile.display_name).run()
    assert [row["display_name"] for row in stored] != ["pwned"]


@pytest.mark.asyncio
async def test_ids_answers_payloads_and_device_tokens(api: Api) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    key = await api.create_key(alice, bob)
    answers = await api.answers(key)
    before = await ConnectionKey.count().run()
    submit = "mutation($input: ConnectionKeyResponseInput!) { submitConnectionKey(input: $input) { attemptId } }"
    for value in NASTY:
        checks = [
            await api.gql("mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }", alice, t=value),
            await api.gql("query($id: ID!) { conversation(id: $id) { id } }", alice, id=value),
            await api.gql(submit, alice, input={"signedPayload": value, "answers": answers}),
            await api.gql(
                submit,
                alice,
                input={"signedPayload": key["signedPayload"], "answers": [{**answers[0], "questionId": value}]},
            ),
        ]
        for result in checks:
            assert not _graphql_ok_or_typed(result), (value, result)
        # A device token is opaque text: stored verbatim when it looks like one, refused otherwise.
        register = "mutation($t: String!) { registerDevice(platform: IOS, token: $t) { id } }"
        if _graphql_ok_or_typed(await api.gql(register, alice, t=value)):
            rows = await DeviceToken.select(DeviceToken.token).where(DeviceToken.user_id == alice).run()
            assert value.strip() in [row["token"] for row in rows]
        unregister = await api.gql("mutation($t: String!) { unregisterDevice(token: $t) }", alice, t=value)
        assert _graphql_ok_or_typed(unregister), (value, unregister)
        rest = [
            await api.client.post("/connection-keys", json={"targetUserId": value}, headers=api.headers(alice)),
            await api.client.post(
                f"/connection-keys/{key['id']}/responses",
                json={"signedPayload": value, "answers": answers},
                headers=api.headers(alice),
            ),
            await api.client.post(
                f"/connection-keys/{key['id']}/responses",
                json={"signedPayload": key["signedPayload"], "answers": [{**answers[0], "value": value}]},
                headers=api.headers(alice),
            ),
            await api.client.put(
                f"/profiles/{urllib.parse.quote(value[:200], safe='')}",
                json=_profile("bio", "x"),
                headers=api.headers(alice),
            ),
        ]
        for response in rest:
            assert response.status_code in (400, 404, 405), (value, response.status_code, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
    assert await ConnectionKey.count().run() == before
    # Answers are free text: a nasty answer is scored like any other, never a 500.
    values = [{**a, "value": NASTY[0] + NASTY[8] if a is answers[0] else a["value"]} for a in answers]
    result = await api.gql(submit, alice, input={"signedPayload": key["signedPayload"], "answers": values})
    assert _graphql_ok_or_typed(result), result
