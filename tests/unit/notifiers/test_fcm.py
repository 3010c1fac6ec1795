"""The FCM HTTP v1 notifier against a local server speaking FCM v1 and Google's OAuth token endpoint."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable

import jwt
import pytest

from notifiers.config import ConfigError
from notifiers.fcm.config import FCM_SCOPE, load_config
from notifiers.fcm.notifier import FcmNotifier
from notifiers.fcm.oauth import JWT_BEARER_GRANT
from plugins.notifier import PushMessage, PushStatus
from tests.fake_push_servers import FCM_PROJECT, FakeFcm, make_apns_key, make_service_account
from tests.unit.notifiers.conftest import FakeClock, fcm_table

MakeFcm = Callable[..., FcmNotifier]


def message(device: str = "fcm-token-1", **overrides: object) -> PushMessage:
    fields: dict = {
        "token": device,
        "platform": "android",
        "title": "Conversation unlocked",
        "body": "You and Sam can now message each other.",
        "data": {"type": "CONVERSATION_UNLOCKED", "conversationId": "c-1"},
        "collapse_key": "ck:c-1",
        "ttl_seconds": 3600,
    }
    fields.update(overrides)
    return PushMessage(**fields)


@pytest.mark.asyncio
async def test_send_posts_the_v1_message_with_an_oauth_token_from_a_signed_assertion(
    make_fcm: MakeFcm, fcm_server: FakeFcm, clock: FakeClock
) -> None:
    async with make_fcm() as notifier:
        [outcome] = await notifier.send([message()])

    assert outcome.status is PushStatus.DELIVERED and outcome.token == "fcm-token-1"
    token_call, send = fcm_server.requests
    # The JWT bearer grant: an RS256 assertion signed with the service account's key.
    form = urllib.parse.parse_qs(token_call.body.decode())
    assert token_call.path == "/token" and form["grant_type"] == [JWT_BEARER_GRANT]
    assertion = form["assertion"][0]
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256", "kid": "test-key-1", "typ": "JWT"}
    assert fcm_server.account is not None
    claims = jwt.decode(assertion, fcm_server.account.public_pem, algorithms=["RS256"], audience=fcm_server.token_uri)
    assert claims["iss"] == claims["sub"] == fcm_server.account.info["client_email"]
    assert claims["scope"] == FCM_SCOPE
    assert claims["iat"] == int(clock.now) and claims["exp"] - claims["iat"] == 3600
    # The send itself.
    assert send.path == f"/v1/projects/{FCM_PROJECT}/messages:send"
    assert send.headers["authorization"] == f"Bearer {fcm_server.issued[0]}"
    assert send.headers["content-type"] == "application/json"
    assert send.json() == {
        "message": {
            "token": "fcm-token-1",
            "notification": {"title": "Conversation unlocked", "body": "You and Sam can now message each other."},
            "data": {"type": "CONVERSATION_UNLOCKED", "conversationId": "c-1"},
            "android": {"priority": "high", "ttl": "3600s", "collapse_key": "ck:c-1"},
        }
    }


@pytest.mark.asyncio
async def test_optional_fields_are_left_out_and_priority_is_configurable(
    make_fcm: MakeFcm, fcm_server: FakeFcm
) -> None:
    async with make_fcm(android_priority="normal") as notifier:
        await notifier.send([message(data={}, collapse_key=None, ttl_seconds=0)])
    body = fcm_server.sends("messages:send")[0].json()["message"]
    assert "data" not in body and body["android"] == {"priority": "normal", "ttl": "0s"}


@pytest.mark.asyncio
async def test_the_access_token_is_cached_until_shortly_before_it_expires(
    make_fcm: MakeFcm, fcm_server: FakeFcm, clock: FakeClock
) -> None:
    async with make_fcm(token_refresh_margin_seconds=300) as notifier:
        await notifier.send([message(f"t{i}") for i in range(5)])  # concurrent: one exchange
        clock.advance(3600 - 301)
        await notifier.send([message("t5")])
        assert notifier.tokens.exchanges == 1
        clock.advance(2)  # inside the margin: renewed
        await notifier.send([message("t6")])
        assert notifier.tokens.exchanges == 2
    sends = fcm_server.sends("messages:send")
    assert sends[-1].headers["authorization"] == f"Bearer {fcm_server.issued[1]}"
    assert all(r.headers["authorization"] == f"Bearer {fcm_server.issued[0]}" for r in sends[:-1])


@pytest.mark.asyncio
async def test_a_refused_access_token_is_retryable_and_renewed_for_the_next_attempt(
    make_fcm: MakeFcm, fcm_server: FakeFcm
) -> None:
    fcm_server.script("t1", "unauthenticated")
    async with make_fcm() as notifier:
        [first] = await notifier.send([message("t1")])
        [second] = await notifier.send([message("t1")])
    assert first.status is PushStatus.RETRYABLE and first.detail == "http 401 UNAUTHENTICATED"
    assert second.status is PushStatus.DELIVERED
    assert len(fcm_server.issued) == 2


@pytest.mark.parametrize(
    ("reply", "status", "detail"),
    [
        ("ok", PushStatus.DELIVERED, ""),
        ("unregistered", PushStatus.INVALID_TOKEN, "http 404 UNREGISTERED"),
        ("bad_token", PushStatus.INVALID_TOKEN, "http 400 INVALID_ARGUMENT"),
        ("sender_mismatch", PushStatus.INVALID_TOKEN, "http 403 SENDER_ID_MISMATCH"),
        ("bad_payload", PushStatus.FAILED, "http 400 INVALID_ARGUMENT"),
        ("quota", PushStatus.RETRYABLE, "http 429 QUOTA_EXCEEDED"),
        ("unavailable", PushStatus.RETRYABLE, "http 503 UNAVAILABLE"),
        ("internal", PushStatus.RETRYABLE, "http 500 INTERNAL"),
    ],
)
@pytest.mark.asyncio
async def test_responses_are_classified_per_token(
    make_fcm: MakeFcm, fcm_server: FakeFcm, reply: str, status: PushStatus, detail: str
) -> None:
    fcm_server.script("target", reply)
    async with make_fcm() as notifier:
        outcomes = await notifier.send([message("target"), message("bystander")])
    by_token = {o.token: o for o in outcomes}
    assert (by_token["target"].status, by_token["target"].detail) == (status, detail)
    assert by_token["bystander"].status is PushStatus.DELIVERED
    assert "target" not in by_token["target"].detail  # details never carry the token


@pytest.mark.parametrize("header", ["7", "Wed, 21 Oct 2099 07:28:00 GMT"])
@pytest.mark.asyncio
async def test_retry_after_is_reported_in_seconds(make_fcm: MakeFcm, fcm_server: FakeFcm, header: str) -> None:
    fcm_server.retry_after = header
    fcm_server.script("t1", "quota")
    async with make_fcm() as notifier:
        [outcome] = await notifier.send([message("t1")])
    assert outcome.status is PushStatus.RETRYABLE
    assert outcome.retry_after is not None and outcome.retry_after >= 7


@pytest.mark.parametrize(
    ("reply", "status"), [("invalid_grant", PushStatus.FAILED), ("unavailable", PushStatus.RETRYABLE)]
)
@pytest.mark.asyncio
async def test_a_failing_token_endpoint_fails_or_defers_the_send(
    make_fcm: MakeFcm, fcm_server: FakeFcm, reply: str, status: PushStatus
) -> None:
    fcm_server.token_replies.append(reply)
    async with make_fcm() as notifier:
        [outcome] = await notifier.send([message()])
    assert outcome.status is status and outcome.detail.startswith("token endpoint: http")
    assert fcm_server.sends("messages:send") == []


@pytest.mark.asyncio
async def test_transport_errors_are_retryable_and_an_unopened_notifier_sends_nothing(
    fcm_server: FakeFcm, clock: FakeClock
) -> None:
    loaded = load_config(fcm_table(fcm_server, base_url="http://127.0.0.1:9", token_uri="http://127.0.0.1:9/token"))
    assert loaded is not None
    async with FcmNotifier(*loaded, clock=clock) as notifier:
        [outcome] = await notifier.send([message()])
    assert outcome.status is PushStatus.RETRYABLE and outcome.detail == "token endpoint: ConnectError"

    [outcome] = await FcmNotifier(*loaded).send([message()])
    assert (outcome.status, outcome.detail) == (PushStatus.RETRYABLE, "notifier not open")
    assert await FcmNotifier(*loaded).send([]) == []


# -- settings --------------------------------------------------------------------------------------


def test_an_absent_empty_or_disabled_table_configures_nothing(fcm_server: FakeFcm) -> None:
    assert load_config({}) is None
    assert load_config(fcm_table(fcm_server, enabled="false")) is None  # env strings convert


def test_the_project_and_token_uri_come_from_the_service_account_unless_set(fcm_server: FakeFcm, tmp_path) -> None:
    loaded = load_config(fcm_table(fcm_server))
    assert loaded is not None
    config, _ = loaded
    assert config.project_id == FCM_PROJECT and config.token_uri == fcm_server.token_uri
    assert config.send_url == f"{fcm_server.base_url}/v1/projects/{FCM_PROJECT}/messages:send"

    assert fcm_server.account is not None
    key_file = tmp_path / "sa.json"
    key_file.write_text(fcm_server.account.json)
    loaded = load_config(
        {"service_account_file": str(key_file), "project_id": "other-project", "token_uri": "https://t.example/"}
    )
    assert loaded is not None
    assert loaded[0].project_id == "other-project" and loaded[0].token_uri == "https://t.example"
    # Secrets stay out of reprs (and so out of logs).
    assert "PRIVATE KEY" not in repr(loaded[0]) + repr(loaded[1]) + str(loaded[1])


@pytest.mark.parametrize(
    ("table", "names"),
    [
        ({"base_url": "https://x"}, "service_account_json or service_account_file is required"),
        ({"service_account_json": "{", "service_account_file": "/x"}, "not both"),
        ({"service_account_file": "/nonexistent/sa.json"}, "service_account_file cannot be read"),
        ({"service_account_json": "{not json"}, "not valid JSON"),
        ({"service_account_json": '{"type": "service_account"}'}, "the service account is Object missing required"),
        ({"timeout_seconds": 0, "service_account_json": "{}"}, "`fcm.timeout_seconds`"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"android_priority": "urgent"}, "`fcm.android_priority`"),
    ],
)
def test_invalid_settings_stop_start_up_naming_the_key(table: dict, names: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(table)
    assert names in str(error.value)


def test_the_service_account_key_must_be_rsa_and_the_project_valid(fcm_server: FakeFcm) -> None:
    info = dict(make_service_account("https://t.example/token").info)
    with pytest.raises(ConfigError, match="project_id is missing or malformed"):
        load_config({"service_account_json": json.dumps({**info, "project_id": ""})})
    with pytest.raises(ConfigError, match="project_id is missing or malformed"):
        load_config({"service_account_json": json.dumps(info), "project_id": "../../evil"})
    with pytest.raises(ConfigError, match="not RSA"):
        load_config({"service_account_json": json.dumps({**info, "private_key": make_apns_key().private_pem})})
    with pytest.raises(ConfigError, match="not a PEM key"):
        load_config({"service_account_json": json.dumps({**info, "private_key": "garbage"})})
    with pytest.raises(ConfigError, match="base_url must start with http"):
        load_config({"service_account_json": json.dumps(info), "base_url": "fcm.googleapis.com"})
