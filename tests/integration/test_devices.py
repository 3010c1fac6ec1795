"""Device registration over GraphQL: typed errors, ownership, and the token never echoed."""

from __future__ import annotations

import uuid

import pytest

from app.db.tables import DeviceToken
from tests.integration.conftest import Api

REGISTER = """mutation($platform: DevicePlatform!, $token: String!) {
  registerDevice(platform: $platform, token: $token) { id platform registeredAt } }"""
UNREGISTER = "mutation($token: String!) { unregisterDevice(token: $token) }"
TOKEN = "fcm-token-" + "a" * 100


@pytest.mark.asyncio
async def test_register_move_and_unregister_a_device(api: Api) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    result = await api.gql(REGISTER, alice, platform="ANDROID", token=TOKEN)
    assert "errors" not in result, result
    device = result["data"]["registerDevice"]
    assert device["platform"] == "ANDROID" and TOKEN not in str(result)
    rows = await DeviceToken.select().run()
    assert [(r["user_id"], r["platform"], r["token"]) for r in rows] == [(alice, "android", TOKEN)]

    # The same phone signed in as someone else: the token moves, it is not duplicated.
    assert "errors" not in await api.gql(REGISTER, bob, platform="ANDROID", token=TOKEN)
    assert [r["user_id"] for r in await DeviceToken.select().run()] == [bob]

    # Only its owner can remove it.
    assert (await api.gql(UNREGISTER, alice, token=TOKEN))["data"]["unregisterDevice"] is False
    assert (await api.gql(UNREGISTER, bob, token=TOKEN))["data"]["unregisterDevice"] is True
    assert await DeviceToken.count().run() == 0


@pytest.mark.asyncio
async def test_bad_device_input_is_typed_and_writes_nothing(api: Api) -> None:
    user = uuid.uuid4()
    bad_token = await api.gql(REGISTER, user, platform="IOS", token="not a token; DROP TABLE device_tokens")
    assert bad_token["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    bad_platform = await api.gql(REGISTER, user, platform="WINDOWS_PHONE", token=TOKEN)
    assert bad_platform["errors"]  # not an enum value: refused by GraphQL validation
    anonymous = await api.gql(REGISTER, None, platform="IOS", token=TOKEN)
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert await DeviceToken.count().run() == 0
