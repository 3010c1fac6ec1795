"""The APNs notifier against a local server speaking the provider API over HTTP/2 (TLS + ALPN, or h2c)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from notifiers.apns.config import PRODUCTION_URL, load_config
from notifiers.apns.notifier import ApnsNotifier
from notifiers.config import ConfigError
from plugins.notifier import PushMessage, PushStatus
from tests.fake_push_servers import (
    APNS_KEY_ID,
    APNS_TEAM_ID,
    APNS_TOPIC,
    ApnsKey,
    FakeApns,
    make_apns_key,
    make_service_account,
    start_apns,
)
from tests.unit.notifiers.conftest import FakeClock, apns_table

MakeApns = Callable[..., ApnsNotifier]
DEVICE = "a1" * 32  # APNs tokens are 64 hex digits
OTHER = "b2" * 32


def message(device: str = DEVICE, **overrides: object) -> PushMessage:
    fields: dict = {
        "token": device,
        "platform": "ios",
        "title": "Conversation unlocked",
        "body": "You and Sam can now message each other.",
        "data": {"type": "CONVERSATION_UNLOCKED", "conversationId": "c-1", "aps": "must not clobber"},
        "collapse_key": "ck:c-1",
        "ttl_seconds": 3600,
    }
    fields.update(overrides)
    return PushMessage(**fields)


@pytest.mark.asyncio
async def test_send_posts_to_the_device_over_http2_with_a_provider_token_and_apns_headers(
    make_apns: MakeApns, apns_server: FakeApns, apns_key: ApnsKey, clock: FakeClock
) -> None:
    async with make_apns() as notifier:
        [outcome] = await notifier.send([message()])

    assert outcome.status is PushStatus.DELIVERED and outcome.token == DEVICE
    [request] = apns_server.requests
    assert request.http_version == "HTTP/2"  # TLS, ALPN h2: what api.push.apple.com speaks
    assert request.method == "POST" and request.path == f"/3/device/{DEVICE}"
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": APNS_KEY_ID, "typ": "JWT"}
    claims = jwt.decode(token, apns_key.public_pem, algorithms=["ES256"], options={"verify_iat": False})
    assert claims == {"iss": APNS_TEAM_ID, "iat": int(clock.now)}
    assert request.headers["apns-topic"] == APNS_TOPIC
    assert request.headers["apns-push-type"] == "alert"
    assert request.headers["apns-priority"] == "10"
    assert request.headers["apns-expiration"] == str(int(clock.now) + 3600)
    assert request.headers["apns-collapse-id"] == "ck:c-1"
    assert request.json() == {
        "aps": {"alert": {"title": "Conversation unlocked", "body": "You and Sam can now message each other."},
                "sound": "default"},
        "type": "CONVERSATION_UNLOCKED",
        "conversationId": "c-1",
    }  # fmt: skip


@pytest.mark.asyncio
async def test_no_ttl_means_now_or_never_and_no_collapse_key_sends_no_collapse_id(
    make_apns: MakeApns, apns_server: FakeApns
) -> None:
    async with make_apns(priority=5) as notifier:
        await notifier.send([message(ttl_seconds=0, collapse_key=None, data={})])
    [request] = apns_server.requests
    assert request.headers["apns-expiration"] == "0" and request.headers["apns-priority"] == "5"
    assert "apns-collapse-id" not in request.headers
    assert request.json() == {"aps": {"alert": {"title": "Conversation unlocked",
                                                "body": "You and Sam can now message each other."},
                                      "sound": "default"}}  # fmt: skip


@pytest.mark.asyncio
async def test_many_sends_share_one_http2_connection(make_apns: MakeApns, apns_server: FakeApns) -> None:
    async with make_apns(max_concurrency=8) as notifier:
        outcomes = await notifier.send([message(f"{i:064x}") for i in range(40)])
    assert {o.status for o in outcomes} == {PushStatus.DELIVERED} and len(outcomes) == 40
    assert len({r.headers["authorization"] for r in apns_server.requests}) == 1
    assert len({r.path for r in apns_server.requests}) == 40
    assert apns_server.connections == 1  # streams multiplexed, as APNs expects


@pytest.mark.asyncio
async def test_the_provider_token_is_reused_then_re_signed_when_it_ages(
    make_apns: MakeApns, apns_server: FakeApns, clock: FakeClock
) -> None:
    async with make_apns(token_refresh_seconds=3000) as notifier:
        await notifier.send([message()])
        clock.advance(2999)
        await notifier.send([message()])
        assert notifier.provider_token.signed == 1
        clock.advance(1)
        await notifier.send([message()])
        assert notifier.provider_token.signed == 2
    first, second, third = (r.headers["authorization"] for r in apns_server.requests)
    assert first == second != third


@pytest.mark.asyncio
async def test_an_expired_provider_token_is_retryable_and_re_signed(make_apns: MakeApns, apns_server: FakeApns) -> None:
    apns_server.script(DEVICE, "expired_provider_token")
    async with make_apns() as notifier:
        [first] = await notifier.send([message()])
        [second] = await notifier.send([message()])
        assert notifier.provider_token.signed == 2
    assert (first.status, first.detail) == (PushStatus.RETRYABLE, "http 403 ExpiredProviderToken")
    assert second.status is PushStatus.DELIVERED


@pytest.mark.asyncio
async def test_a_token_signed_with_another_key_is_refused_as_a_permanent_failure(
    apns_server: FakeApns, clock: FakeClock
) -> None:
    config = load_config(apns_table(apns_server, make_apns_key()))
    assert config is not None
    async with ApnsNotifier(config, clock=clock) as notifier:
        [outcome] = await notifier.send([message()])
    assert (outcome.status, outcome.detail) == (PushStatus.FAILED, "http 403 InvalidProviderToken")


@pytest.mark.parametrize(
    ("reply", "status", "detail"),
    [
        ("ok", PushStatus.DELIVERED, ""),
        ("unregistered", PushStatus.INVALID_TOKEN, "http 410 Unregistered"),
        ("bad_token", PushStatus.INVALID_TOKEN, "http 400 BadDeviceToken"),
        ("not_for_topic", PushStatus.INVALID_TOKEN, "http 400 DeviceTokenNotForTopic"),
        ("too_many", PushStatus.RETRYABLE, "http 429 TooManyRequests"),
        ("internal", PushStatus.RETRYABLE, "http 500 InternalServerError"),
        ("unavailable", PushStatus.RETRYABLE, "http 503 ServiceUnavailable"),
        ("too_large", PushStatus.FAILED, "http 413 PayloadTooLarge"),
    ],
)
@pytest.mark.asyncio
async def test_responses_are_classified_per_token(
    make_apns: MakeApns, apns_server: FakeApns, reply: str, status: PushStatus, detail: str
) -> None:
    apns_server.script(DEVICE, reply)
    async with make_apns() as notifier:
        outcomes = await notifier.send([message(DEVICE), message(OTHER)])
    by_token = {o.token: o for o in outcomes}
    assert (by_token[DEVICE].status, by_token[DEVICE].detail) == (status, detail)
    assert by_token[OTHER].status is PushStatus.DELIVERED


@pytest.mark.asyncio
async def test_retry_after_is_honoured_when_apns_sends_one(make_apns: MakeApns, apns_server: FakeApns) -> None:
    apns_server.retry_after = "12"
    apns_server.script(DEVICE, "unavailable")
    async with make_apns() as notifier:
        [outcome] = await notifier.send([message()])
    assert outcome.status is PushStatus.RETRYABLE and outcome.retry_after == 12.0


@pytest.mark.asyncio
async def test_a_malformed_token_is_invalid_without_a_request(make_apns: MakeApns, apns_server: FakeApns) -> None:
    async with make_apns() as notifier:
        outcomes = await notifier.send([message("not-hex"), message("../../3/device/" + DEVICE)])
    assert {o.status for o in outcomes} == {PushStatus.INVALID_TOKEN}
    assert apns_server.requests == []


@pytest.mark.asyncio
async def test_clear_text_http2_with_prior_knowledge(apns_key: ApnsKey, tmp_path: Path, make_apns: MakeApns) -> None:
    with start_apns(apns_key.public_pem, tmp_path, tls=False) as server:
        async with make_apns(server, ca_file="") as notifier:
            [outcome] = await notifier.send([message()])
    assert outcome.status is PushStatus.DELIVERED
    assert [r.http_version for r in server.requests] == ["HTTP/2"]


@pytest.mark.asyncio
async def test_http2_off_speaks_http1(make_apns: MakeApns, apns_server: FakeApns) -> None:
    async with make_apns(http2=False) as notifier:
        [outcome] = await notifier.send([message()])
    assert outcome.status is PushStatus.DELIVERED
    assert [r.http_version for r in apns_server.requests] == ["HTTP/1.1"]


@pytest.mark.asyncio
async def test_an_untrusted_certificate_is_a_retryable_transport_error(
    apns_server: FakeApns, apns_key: ApnsKey, clock: FakeClock
) -> None:
    config = load_config(apns_table(apns_server, apns_key, ca_file=""))  # the system store: no fake CA
    assert config is not None
    async with ApnsNotifier(config, clock=clock) as notifier:
        [outcome] = await notifier.send([message()])
    assert (outcome.status, outcome.detail) == (PushStatus.RETRYABLE, "ConnectError")
    [outcome] = await ApnsNotifier(config).send([message()])
    assert (outcome.status, outcome.detail) == (PushStatus.RETRYABLE, "notifier not open")


# -- settings --------------------------------------------------------------------------------------


def test_an_absent_empty_or_disabled_table_configures_nothing(apns_key: ApnsKey) -> None:
    assert load_config({}) is None
    assert load_config({"enabled": "false", "team_id": "x"}) is None


def test_the_key_can_come_from_a_file_and_stays_out_of_reprs(apns_key: ApnsKey, tmp_path: Path) -> None:
    key_file = tmp_path / f"AuthKey_{APNS_KEY_ID}.p8"
    key_file.write_text(apns_key.private_pem)
    config = load_config(
        {"team_id": APNS_TEAM_ID, "key_id": APNS_KEY_ID, "private_key_file": str(key_file), "topic": APNS_TOPIC}
    )
    assert config is not None
    assert config.base_url == PRODUCTION_URL and config.http2 and config.platforms == ("ios",)
    assert config.private_key.startswith("-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE KEY" not in repr(config) + str(config)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"team_id": "short"}, "team_id must be 10 letters or digits"),
        ({"key_id": ""}, "key_id must be 10 letters or digits"),
        ({"topic": " "}, "topic (the app's bundle id) is required"),
        ({"private_key": ""}, "private_key or private_key_file is required"),
        ({"private_key_file": "/nonexistent.p8"}, "not both"),
        ({"private_key": "garbage"}, "not a PEM (.p8) key"),
        ({"base_url": "api.push.apple.com"}, "base_url must start with http"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file cannot be loaded"),
        ({"priority": 11}, "`apns.priority`"),
        ({"token_refresh_seconds": 60}, "`apns.token_refresh_seconds`"),
        ({"http2": "maybe"}, "`apns.http2`"),
        ({"bundle": "x"}, "bundle"),
    ],
)
def test_invalid_settings_stop_start_up_naming_the_key(apns_key: ApnsKey, overrides: dict, names: str) -> None:
    table = {
        "team_id": APNS_TEAM_ID,
        "key_id": APNS_KEY_ID,
        "private_key": apns_key.private_pem,
        "topic": APNS_TOPIC,
        **overrides,
    }
    with pytest.raises(ConfigError) as error:
        load_config(table)
    assert names in str(error.value)
    assert "PRIVATE KEY" not in str(error.value)


def test_the_key_must_be_ec_p256() -> None:
    rsa_pem = make_service_account("https://t.example/token").info["private_key"]
    with pytest.raises(ConfigError, match="not an EC P-256 key"):
        load_config({"team_id": APNS_TEAM_ID, "key_id": APNS_KEY_ID, "private_key": rsa_pem, "topic": APNS_TOPIC})
