"""Push notifications end to end on each database: device tokens in the real schema, the built-in
notifier plugins registered from settings, and local servers speaking FCM v1 (with its OAuth token
endpoint) and APNs over TLS + HTTP/2."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from app.db.data_keys import DataKeyStore
from app.db.device_store import DeviceStore
from app.db.engine import Database
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.profile_store import ProfileStore
from app.db.tables import DeviceToken, utcnow
from app.domain.events import ConversationStatusChanged, EventType
from app.domain.quiz import ProfileInput, UnlockState
from app.services.encryption import FieldEncryption
from app.services.key_encryption_keys import LocalKeyEncryptionKeys
from app.services.notifications import NotificationPolicy, NotificationService
from app.settings import EncryptionSettings, Settings
from notifiers.apns import plugin as apns_plugin
from notifiers.fcm import plugin as fcm_plugin
from plugins.context import PluginContext
from plugins.manager import build_plugin_manager, collect_notifiers
from tests.fake_push_servers import (
    APNS_KEY_ID,
    APNS_TEAM_ID,
    APNS_TOPIC,
    ApnsKey,
    FakeApns,
    FakeFcm,
    make_apns_key,
    start_apns,
    start_fcm,
)

ALICE, BOB = uuid.uuid4(), uuid.uuid4()
ALICE_PHONE, ALICE_IPHONE = "alice-android-token-0001", "a1" * 32
BOB_RATE_LIMITED, BOB_BAD, BOB_DEAD_IPHONE = "bob-android-token-0002", "bob-android-garbled", "d0" * 32


@pytest.fixture(scope="module")
def push_key() -> ApnsKey:
    return make_apns_key()


@pytest.fixture
def fcm() -> Iterator[FakeFcm]:
    with start_fcm() as fake:
        yield fake


@pytest.fixture
def apns(push_key: ApnsKey, tmp_path: Path) -> Iterator[FakeApns]:
    with start_apns(push_key.public_pem, tmp_path) as fake:  # TLS, HTTP/2 by ALPN
        yield fake


@pytest_asyncio.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings.database)
    await database.start()
    await database.migrate()
    try:
        yield database
    finally:
        await database.stop()


def _context(fcm: FakeFcm, apns: FakeApns, key: ApnsKey) -> PluginContext:
    assert fcm.account is not None
    return PluginContext(
        settings={
            "fcm": {"service_account_json": fcm.account.json, "base_url": fcm.base_url},
            "apns": {
                "team_id": APNS_TEAM_ID,
                "key_id": APNS_KEY_ID,
                "private_key": key.private_pem,
                "topic": APNS_TOPIC,
                "base_url": apns.base_url,
                "ca_file": apns.ca_file,
            },
        }
    )


def _service(context: PluginContext, **policy: Any) -> NotificationService:
    pm = build_plugin_manager([], notifiers=[])  # the built-ins, registered as their entry points would be
    pm.register(fcm_plugin, name="fcm")
    pm.register(apns_plugin, name="apns")
    return NotificationService(
        DeviceStore(),
        collect_notifiers(pm, context),
        NotificationPolicy(**{"backoff_base_seconds": 0.01, "max_backoff_seconds": 0.5, **policy}),
        profiles=ProfileStore(_encryption()),
        processed=OutboxStore(),
    )


def _encryption() -> FieldEncryption:
    # Profiles are sealed at rest: the stores need data keys (the default development KEK here).
    return FieldEncryption(LocalKeyEncryptionKeys.from_settings(EncryptionSettings()), DataKeyStore(), utcnow)


def _status(state: UnlockState, conversation_id: uuid.UUID) -> ConversationStatusChanged:
    return ConversationStatusChanged(
        conversation_id=conversation_id,
        participant_ids=[ALICE, BOB],
        unlock_state=state,
        attempt_id=uuid.uuid4(),
        score=0.9,
        retry_available_at=None,
        updated_at=utcnow(),
    )


async def _profiles() -> None:
    store = ProfileStore(_encryption())
    for user_id, name in [(ALICE, "Alice"), (BOB, "Bob")]:
        profile = ProfileInput(display_name=name, prompts=[], consent_preferences=[])
        await store.upsert_profile(user_id, profile, utcnow())


@pytest.mark.asyncio
async def test_device_store_registers_moves_unregisters_and_prunes(db: Database) -> None:
    store, now = DeviceStore(), utcnow()
    first = await store.register(ALICE, "android", "shared-device", now)
    moved = await store.register(BOB, "ios", "shared-device", now + timedelta(seconds=1))
    assert moved.id == first.id and (moved.user_id, moved.platform) == (BOB, "ios")  # one row, reassigned
    assert moved.created_at == first.created_at and moved.updated_at > first.updated_at
    assert await DeviceToken.count().run() == 1

    await store.register(ALICE, "android", "alice-1", now)
    await store.record_errors({"alice-1": "http 503 UNAVAILABLE"}, now)
    assert [d.last_error for d in await store.tokens_for([ALICE])] == ["http 503 UNAVAILABLE"]
    again = await store.register(ALICE, "android", "alice-1", now)  # re-registering clears the error
    assert again.last_error is None

    assert not await store.unregister("shared-device", ALICE)  # not Alice's to remove
    assert await store.unregister("shared-device", BOB)
    assert not await store.unregister("shared-device")
    assert await store.tokens_for([]) == []

    for i in range(4):
        await store.register(ALICE, "android", f"alice-extra-{i}", now + timedelta(seconds=10 + i), max_per_user=3)
    assert sorted(d.token for d in await store.tokens_for([ALICE, BOB])) == [
        "alice-extra-1",
        "alice-extra-2",
        "alice-extra-3",
    ]
    assert await store.prune(["alice-extra-1", "alice-extra-3", "never-registered"]) == 2
    assert await store.prune([]) == 0
    assert [d.token for d in await store.tokens_for([ALICE])] == ["alice-extra-2"]


@pytest.mark.asyncio
async def test_an_unlock_pushes_each_device_once_retries_rate_limits_and_prunes_dead_tokens(
    db: Database, fcm: FakeFcm, apns: FakeApns, push_key: ApnsKey
) -> None:
    await _profiles()
    notifications = _service(_context(fcm, apns, push_key))
    for user_id, platform, token in [
        (ALICE, "android", ALICE_PHONE),
        (ALICE, "ios", ALICE_IPHONE),
        (BOB, "android", BOB_RATE_LIMITED),
        (BOB, "android", BOB_BAD),
        (BOB, "ios", BOB_DEAD_IPHONE),
    ]:
        await notifications.register_device(user_id, platform, token)
    fcm.retry_after = "0"
    fcm.script(BOB_RATE_LIMITED, "quota")  # 429, then ok
    fcm.script(BOB_BAD, "bad_token")
    apns.script(BOB_DEAD_IPHONE, "unregistered")
    conversation_id = uuid.uuid4()
    unlocked = _status(UnlockState.UNLOCKED, conversation_id)
    event = new_envelope(EventType.CONVERSATION_UNLOCKED, conversation_id, unlocked, utcnow())

    async with notifications:
        await notifications.handle([event])
        await notifications.handle([event])  # a redelivery sends nothing twice
        assert await notifications.drain(10)

    fcm_sends = [r.json()["message"] for r in fcm.sends("messages:send")]
    apns_sends = apns.sends("/3/device/")
    delivered_to = {m["token"]: m for m in fcm_sends}
    assert sorted(m["token"] for m in fcm_sends) == sorted([ALICE_PHONE, BOB_RATE_LIMITED, BOB_RATE_LIMITED, BOB_BAD])
    assert sorted(r.path.removeprefix("/3/device/") for r in apns_sends) == sorted([ALICE_IPHONE, BOB_DEAD_IPHONE])
    assert {r.http_version for r in apns_sends} == {"HTTP/2"}
    assert len(fcm.issued) == 1  # one OAuth exchange for all sends
    assert delivered_to[ALICE_PHONE]["notification"] == {
        "title": "Conversation unlocked",
        "body": "You and Bob can now message each other.",
    }
    assert delivered_to[BOB_RATE_LIMITED]["notification"]["body"] == "You and Alice can now message each other."
    iphone = next(r for r in apns_sends if r.path.endswith(ALICE_IPHONE))
    assert iphone.json()["aps"]["alert"]["body"] == "You and Bob can now message each other."
    assert iphone.json()["conversationId"] == str(conversation_id)

    remaining = {d.token: d for d in await DeviceStore().tokens_for([ALICE, BOB])}
    assert sorted(remaining) == sorted([ALICE_PHONE, ALICE_IPHONE, BOB_RATE_LIMITED])  # dead tokens pruned
    assert all(d.last_error is None for d in remaining.values())
    assert notifications.counts["delivered"] == 3 and notifications.counts["pruned"] == 2
    assert notifications.counts["retryable"] == 1


@pytest.mark.asyncio
async def test_retry_available_goes_to_the_requester_and_exhausted_retries_are_recorded(
    db: Database, fcm: FakeFcm, apns: FakeApns, push_key: ApnsKey
) -> None:
    await _profiles()
    notifications = _service(_context(fcm, apns, push_key), max_attempts=2)
    await notifications.register_device(ALICE, "android", ALICE_PHONE)
    await notifications.register_device(BOB, "android", BOB_RATE_LIMITED)
    fcm.script(ALICE_PHONE, "unavailable", "unavailable")
    conversation_id = uuid.uuid4()

    async with notifications:
        report = await notifications.notify_status(_status(UnlockState.RETRY_AVAILABLE, conversation_id), ALICE)

    assert (report.messages, report.delivered, report.failed, report.attempts) == (1, 0, 1, 2)
    sends = fcm.sends("messages:send")
    assert [r.json()["message"]["token"] for r in sends] == [ALICE_PHONE, ALICE_PHONE]  # never Bob
    assert sends[0].json()["message"]["notification"] == {
        "title": "You can try again",
        "body": "Take Bob's Connection Key again now.",
    }
    [alice_phone] = await DeviceStore().tokens_for([ALICE])
    assert alice_phone.last_error == "http 503 UNAVAILABLE"  # kept, with why the last send failed
