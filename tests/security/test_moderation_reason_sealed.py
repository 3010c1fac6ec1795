"""A moderator's ``reason`` is sealed at rest with the attempt's requester's data key, on SQLite and
PostgreSQL: raw rows hold ciphertext bound to their place, the requester's erasure shreds it (the detail
view lists it as erased), and key rotation re-seals it like every other sealed column."""

from __future__ import annotations

import uuid

import pytest
import pytest_asyncio

from app.db.moderation_store import DECISION_TABLE
from app.db.tables import ModerationDecision, UserDataKey
from app.domain.field_crypto import DecryptionError, FieldRef, is_ciphertext, token_key_id
from app.services.key_rotation import KeyRotation
from tests.conftest import make_settings
from tests.integration.conftest import Api, api_factory  # noqa: F401 - the running-app fixture
from tests.security.test_moderation import Start, failed_attempt, moderator_headers

pytestmark = pytest.mark.asyncio

SECRET = "REASON-SEALED-9d41: she wrote that her phone is 555-0199"


@pytest_asyncio.fixture
async def api(api_factory: Start, database_url: str) -> Api:  # noqa: F811 - the fixture imported above
    return await api_factory(make_settings(database_url, retry={"cooldown_seconds": 3600}))


async def raw_reason(decision_id: str) -> str:
    row = await ModerationDecision.select(ModerationDecision.reason).where(ModerationDecision.id == decision_id).run()
    return row[0]["reason"]


async def key_id_of(user: uuid.UUID) -> str:
    return (await UserDataKey.select(UserDataKey.key_id).where(UserDataKey.user_id == user).first().run())["key_id"]


async def test_the_reason_is_sealed_with_the_requesters_key_and_shredded_by_their_erasure(api: Api) -> None:
    alice, _, _, outcome = await failed_attempt(api)
    url = f"/moderation/attempts/{outcome['attemptId']}"
    headers = moderator_headers(api)
    body = {"decision": "UNLOCK", "reason": SECRET}
    decided = await api.client.post(f"{url}/override", json=body, headers={**headers, "Idempotency-Key": "k-1"})
    assert decided.status_code == 201, decided.text
    decision = decided.json()["decision"]
    assert decision["reason"] == SECRET

    stored = await raw_reason(decision["id"])
    assert is_ciphertext(stored) and "555-0199" not in stored
    assert token_key_id(stored) == await key_id_of(alice)  # the requester's key, not the moderator's
    keyring = await api.services.encryption.keyring([alice])
    assert keyring.open(alice, FieldRef(DECISION_TABLE, "reason", uuid.UUID(decision["id"])), stored) == SECRET
    with pytest.raises(DecryptionError):  # bound to its row: it does not open as another decision's
        keyring.open(alice, FieldRef(DECISION_TABLE, "reason", uuid.uuid4()), stored)
    detail = (await api.client.get(url, headers=headers)).json()
    assert [d["reason"] for d in detail["decisions"]] == [SECRET] and detail["erased"] == []

    service = api.headers(uuid.uuid4(), role=api.settings.auth.service_role)
    assert (await api.client.delete(f"/users/{alice}", headers=service)).status_code == 200
    detail = (await api.client.get(url, headers=headers)).json()
    assert [d["reason"] for d in detail["decisions"]] == [None]
    assert "decisions.reason" in detail["erased"] and "responses" in detail["erased"]
    # A retried request still replays (the reason can no longer be compared); it shows no reason.
    replay = await api.client.post(f"{url}/override", json=body, headers={**headers, "Idempotency-Key": "k-1"})
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    assert replay.json()["decision"]["reason"] is None
    # A decision made after the erasure is stored sealed under a key nobody holds.
    lock = await api.client.post(f"{url}/override", json={"decision": "LOCK", "reason": SECRET}, headers=headers)
    assert lock.status_code == 201, lock.text
    assert lock.json()["decision"]["reason"] is None
    assert is_ciphertext(await raw_reason(lock.json()["decision"]["id"]))
    assert [d["reason"] for d in (await api.client.get(url, headers=headers)).json()["decisions"]] == [None, None]


async def test_rotation_reseals_the_reason_and_seals_legacy_plaintext(api: Api) -> None:
    alice, _, _, outcome = await failed_attempt(api)
    url = f"/moderation/attempts/{outcome['attemptId']}"
    headers = moderator_headers(api)
    decided = await api.client.post(f"{url}/override", json={"decision": "UNLOCK", "reason": SECRET}, headers=headers)
    assert decided.status_code == 201, decided.text
    sealed_id = decided.json()["decision"]["id"]
    # A decision from before the reason was sealed: plaintext written straight into the table.
    legacy = await api.client.post(f"{url}/override", json={"decision": "LOCK", "reason": "legacy"}, headers=headers)
    legacy_id = legacy.json()["decision"]["id"]
    await (
        ModerationDecision.update({ModerationDecision.reason: f"{SECRET} (legacy)"})
        .where(ModerationDecision.id == legacy_id)
        .run()
    )
    services = api.services
    rotation = KeyRotation(services.db, services.encryption, services.audit, services.clock)

    sealed = await rotation.seal_legacy(batch_size=10)
    assert sealed.complete and sealed.done == 1
    raw = await raw_reason(legacy_id)
    assert is_ciphertext(raw) and token_key_id(raw) == await key_id_of(alice)

    old_key = await key_id_of(alice)
    assert (await rotation.rotate_data(services.clock(), batch_size=10)).complete
    new_key = await key_id_of(alice)
    assert new_key != old_key
    assert {token_key_id(await raw_reason(i)) for i in (sealed_id, legacy_id)} == {new_key}
    services.encryption.clear_cache()
    detail = (await api.client.get(url, headers=headers)).json()
    assert [d["reason"] for d in detail["decisions"]] == [SECRET, f"{SECRET} (legacy)"]
