"""No object is reachable by a user who does not own it: connection keys, attempts (submissions),
conversations, status subscriptions, profiles and device tokens, over GraphQL and REST. Each check runs
against an object that exists and belongs to someone else, and is compared with its owner's success."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.db.tables import ConnectionKeyAttempt, DeviceToken
from tests.integration.conftest import Api
from tests.ws_client import TRANSPORT_WS, GraphQLWebSocket, serve_app

PROBLEM = "application/problem+json"
SUBMIT = """mutation($input: ConnectionKeyResponseInput!) { submitConnectionKey(input: $input) { attemptId } }"""
STATUS = "subscription($id: ID!) { connectionKeyStatus(conversationId: $id) { conversationId unlockState } }"


def _code(result: dict[str, Any]) -> str:
    assert result.get("errors"), result
    return result["errors"][0]["extensions"]["code"]


async def _world(api: Api) -> dict[str, Any]:
    alice, bob, mallory = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for user, name in ((alice, "Alice"), (bob, "Bob"), (mallory, "Mallory")):
        await api.upsert_profile(user, name)
    key = await api.create_key(alice, bob)
    return {"alice": alice, "bob": bob, "mallory": mallory, "key": key, "answers": await api.answers(key)}


@pytest.mark.asyncio
async def test_connection_keys_and_attempts(api: Api) -> None:
    world = await _world(api)
    alice, mallory, key = world["alice"], world["mallory"], world["key"]
    # Listing: only the requester sees the key (and its signed payload).
    mine = await api.gql("{ myConnectionKeys { id signedPayload } }", alice)
    assert [k["id"] for k in mine["data"]["myConnectionKeys"]] == [key["id"]]
    theirs = await api.gql("{ myConnectionKeys { id } }", mallory)
    assert theirs["data"]["myConnectionKeys"] == []
    # Submitting someone else's quiz (an attempt in their name): GraphQL and REST.
    submission = {"signedPayload": key["signedPayload"], "answers": world["answers"]}
    assert _code(await api.gql(SUBMIT, mallory, input=submission)) == "FORBIDDEN"
    rest = await api.client.post(
        f"/connection-keys/{key['id']}/responses", json=submission, headers=api.headers(mallory)
    )
    assert rest.status_code == 403 and rest.json()["code"] == "FORBIDDEN"
    assert rest.headers["content-type"].startswith(PROBLEM)
    # Nor may anyone but a service role ask for a key in someone else's name.
    on_behalf = await api.client.post(
        "/connection-keys",
        json={"targetUserId": str(world["bob"]), "requesterUserId": str(alice)},
        headers=api.headers(mallory),
    )
    assert on_behalf.status_code == 403 and on_behalf.json()["code"] == "FORBIDDEN"
    assert await ConnectionKeyAttempt.count().run() == 0
    # The owner can.
    result = await api.gql(SUBMIT, alice, input=submission)
    assert "errors" not in result, result
    assert await ConnectionKeyAttempt.count().run() == 1


@pytest.mark.asyncio
async def test_conversations(api: Api) -> None:
    world = await _world(api)
    query = "query($id: ID!) { conversation(id: $id) { id participantIds unlockState } }"
    cid = world["key"]["conversationId"]
    assert _code(await api.gql(query, world["mallory"], id=cid)) == "FORBIDDEN"
    for participant in (world["alice"], world["bob"]):
        assert (await api.gql(query, participant, id=cid))["data"]["conversation"]["id"] == cid


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.asyncio
async def test_status_subscriptions(api: Api) -> None:
    world = await _world(api)
    cid = world["key"]["conversationId"]
    async with serve_app(api.app) as base:
        async with GraphQLWebSocket.open(base + "/graphql", TRANSPORT_WS) as mallory:
            await mallory.init({"Authorization": f"Bearer {api.token(world['mallory'])}"})
            await mallory.subscribe("1", STATUS, id=cid)
            message = await mallory.receive()
            assert message["type"] == "error" and message["payload"][0]["extensions"]["code"] == "FORBIDDEN"
        async with GraphQLWebSocket.open(base + "/graphql", TRANSPORT_WS) as bob:
            await bob.init({"Authorization": f"Bearer {api.token(world['bob'])}"})
            await bob.subscribe("1", STATUS, id=cid)
            message = await bob.receive()
            assert message["type"] == "next", message
            assert message["payload"]["data"]["connectionKeyStatus"]["conversationId"] == cid


@pytest.mark.asyncio
async def test_profiles(api: Api) -> None:
    world = await _world(api)
    alice, mallory = world["alice"], world["mallory"]
    overwrite = {"displayName": "Owned", "prompts": [], "consentPreferences": []}
    rest = await api.client.put(f"/profiles/{alice}", json=overwrite, headers=api.headers(mallory))
    assert rest.status_code == 403 and rest.json()["code"] == "FORBIDDEN"
    # GraphQL has no way to name another user: the caller's own profile is the only one written or read.
    me = await api.gql("{ me { userId displayName } }", alice)
    assert me["data"]["me"] == {"userId": str(alice), "displayName": "Alice"}
    assert (await api.gql("{ me { userId } }", mallory))["data"]["me"]["userId"] == str(mallory)
    # A service role (backend sync) may write it; the owner may too.
    service = await api.client.put(
        f"/profiles/{alice}",
        json={**overwrite, "displayName": "Synced"},
        headers=api.headers(mallory, role="service_role"),
    )
    assert service.status_code == 200
    own = await api.client.put(
        f"/profiles/{alice}", json={**overwrite, "displayName": "Alice"}, headers=api.headers(alice)
    )
    assert own.status_code == 200


@pytest.mark.asyncio
async def test_device_tokens(api: Api) -> None:
    alice, mallory = uuid.uuid4(), uuid.uuid4()
    token = "fcm-token-" + "b" * 100
    register = "mutation($t: String!) { registerDevice(platform: ANDROID, token: $t) { id platform } }"
    device = await api.gql(register, alice, t=token)
    assert "errors" not in device and "token" not in device["data"]["registerDevice"]
    removed = await api.gql("mutation($t: String!) { unregisterDevice(token: $t) }", mallory, t=token)
    assert removed["data"]["unregisterDevice"] is False
    rows = await DeviceToken.select(DeviceToken.user_id).where(DeviceToken.token == token).run()
    assert [r["user_id"] for r in rows] == [alice]
    removed = await api.gql("mutation($t: String!) { unregisterDevice(token: $t) }", alice, t=token)
    assert removed["data"]["unregisterDevice"] is True
