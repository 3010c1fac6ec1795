"""Field encryption at rest, on SQLite and PostgreSQL: raw rows hold no plaintext, ciphertext does not
move between places, erasure shreds, rotation is batched and resumable, settings refuse bad keys.

Raw rows are read with plain SQL through the engine, never through the stores."""

# ruff: noqa: F811 - `api`/`api_factory` are fixtures imported from tests.integration.conftest

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.db.key_store import breakdown_feedback_ref, seal_breakdown
from app.db.profile_store import ProfileStore
from app.db.tables import Profile, UserDataKey
from app.domain.audit_chain import AuditActor
from app.domain.field_crypto import (
    DecryptionError,
    FieldRef,
    KeyDestroyedError,
    Keyring,
    UserKeys,
    is_ciphertext,
    new_data_key,
    token_key_id,
)
from app.domain.quiz import ProfileInput
from app.services.audit import verify_chain
from app.services.create_key import quiz_cache_key, quiz_cache_ref
from app.services.encryption import FieldEncryption
from app.services.key_rotation import KeyRotation, legacy_plaintext_left
from app.settings import Settings, SettingsError, load_settings
from tests.conftest import make_settings
from tests.integration.conftest import Api, api, api_factory  # noqa: F401 - the running-app fixtures

Start = Callable[[Settings], Awaitable[Api]]
MARKERS = {
    "name": "Zanzibarquokka",
    "bio": "BIOMARKER-7f3a",
    "prompt": "PROMPTMARKER-91c2",
    "consent": "CONSENTMARKER-44d0",
    "segment": "SEGMENTMARKER-5e1b",
    "answer": "ANSWERMARKER-c0de",
    "reason": "REASONMARKER-3b7e",
}
KEK_1 = base64.b64encode(b"1" * 32).decode()
KEK_2 = base64.b64encode(b"2" * 32).decode()


def _profile(name: str = MARKERS["name"]) -> dict[str, Any]:
    return {
        "displayName": name,
        "bio": f"{MARKERS['bio']} loves hiking",
        "prompts": [
            {"question": "My ideal Sunday", "answer": f"A long hike in the hills {MARKERS['prompt']}"},
            {"question": "I geek out on", "answer": f"Mechanical keyboards {MARKERS['prompt']}"},
            {"question": "A shower thought", "answer": f"Octopuses have three hearts {MARKERS['prompt']}"},
        ],
        "consentPreferences": [
            {"topic": "pace", "statement": f"Chat a week before meeting {MARKERS['consent']}"},
            {"topic": "photos", "statement": f"No photo requests {MARKERS['consent']}"},
            {"topic": "calls", "statement": f"Ask before calling {MARKERS['consent']}"},
        ],
        "locale": "en",
        "demographicSegments": {"ageBand": MARKERS["segment"]},
    }


async def _put_profile(api: Api, user: uuid.UUID, profile: dict[str, Any]) -> None:
    # REST: the GraphQL ProfileInput has no demographicSegments.
    response = await api.client.put(f"/profiles/{user}", json=profile, headers=api.headers(user))
    assert response.status_code == 200, response.text


async def _flow(api: Api) -> tuple[uuid.UUID, uuid.UUID, dict[str, Any], dict[str, Any]]:
    """Alice answers a quiz about Bob (whose profile carries the markers); returns ids, key, result."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await _put_profile(api, alice, _profile("Alice"))
    await _put_profile(api, bob, _profile())
    payload = await api.create_key(alice, bob)
    answers = [{**a, "value": f"{a['value']} {MARKERS['answer']}"} for a in await api.answers(payload, correct=False)]
    result = await api.submit(alice, payload["signedPayload"], answers)
    assert "errors" not in result, result
    return alice, bob, payload, result["data"]["submitConnectionKey"]


async def _raw_tables(api: Api) -> dict[str, list[dict[str, Any]]]:
    engine = api.services.db.engine
    if api.services.db.is_sqlite:
        names = [r["name"] for r in await engine.run_ddl("SELECT name FROM sqlite_master WHERE type = 'table'")]
    else:
        names = [
            r["tablename"] for r in await engine.run_ddl("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
    return {name: list(await engine.run_ddl(f'SELECT * FROM "{name}"')) for name in names}  # noqa: S608 - catalog names


@pytest.mark.asyncio
async def test_raw_rows_hold_no_plaintext_after_a_realistic_flow(api: Api) -> None:
    _, bob, payload, outcome = await _flow(api)
    # Through the API everything reads back as written.
    me = await api.gql("{ me { displayName bio consentPreferences { statement } } }", bob)
    assert me["data"]["me"]["displayName"] == MARKERS["name"] and MARKERS["bio"] in me["data"]["me"]["bio"]
    assert outcome["attemptId"] and payload["questions"]
    attempt = await api.services.key_store.get_attempt(uuid.UUID(outcome["attemptId"]))
    assert attempt is not None and attempt.responses and all(MARKERS["answer"] in r.value for r in attempt.responses)
    # A moderator's reason quoting the answers is sealed too (the requester's key). The orchestrator applies
    # the attempt's outcome to the conversation in the background: wait for it, so the override does not
    # race it (a state changed under a decision is a 409), then unlock.
    conversation = uuid.UUID(payload["conversationId"])

    async def applied() -> bool:
        # A failed attempt's retry state is the requester's own (the conversation row stays LOCKED).
        state = await api.services.profile_store.requester_state(conversation, uuid.UUID(str(attempt.requester_id)))
        return state is not None and state.unlock_state.value == outcome["unlockState"]

    await api.eventually(applied)
    assert outcome["unlockState"] != "UNLOCKED"  # the markers are not the right answers
    override = await api.client.post(
        f"/moderation/attempts/{outcome['attemptId']}/override",
        json={"decision": "UNLOCK", "reason": f"Answered {MARKERS['answer']} {MARKERS['reason']}"},
        headers=api.headers(uuid.uuid4(), extra_claims={"app_metadata": {"roles": ["moderator"]}}),
    )
    assert override.status_code == 201 and MARKERS["reason"] in override.json()["decision"]["reason"]

    tables = await _raw_tables(api)
    assert {"profiles", "connection_key_questions", "connection_key_attempts", "user_data_keys"} <= set(tables)
    assert tables["connection_key_attempts"] and tables["connection_key_questions"] and tables["moderation_decisions"]
    found = [
        (table, column, marker)
        for table, rows in tables.items()
        for row in rows
        for column, value in row.items()
        for marker in MARKERS.values()
        if marker.lower() in str(value).lower()
    ]
    assert found == []
    profile = next(r for r in tables["profiles"] if str(r["user_id"]) == str(bob))
    assert all(is_ciphertext(profile[c]) for c in ("display_name", "bio", "prompts", "consent_preferences"))
    # The data key itself is stored only wrapped.
    key_row = next(r for r in tables["user_data_keys"] if str(r["user_id"]) == str(bob))
    assert key_row["kek_id"] == "dev-kek-1" and key_row["wrapped_key"]


@pytest.mark.asyncio
async def test_ciphertext_copied_to_another_row_or_column_does_not_decrypt(api: Api) -> None:
    eve, bob = uuid.uuid4(), uuid.uuid4()
    await _put_profile(api, eve, _profile("Eve"))
    await _put_profile(api, bob, _profile())
    bobs = await Profile.select(Profile.bio).where(Profile.user_id == bob).first().run()
    # Another row (even the same owner's key would not help: the record id is authenticated).
    await Profile.update({Profile.bio: bobs["bio"]}).where(Profile.user_id == eve).run()
    api.services.encryption.clear_cache()
    with pytest.raises(DecryptionError):
        await api.services.profile_store.get_profile(eve)
    # Another column of the same row.
    await _put_profile(api, bob, _profile())
    fresh = await Profile.select(Profile.bio).where(Profile.user_id == bob).first().run()
    await Profile.update({Profile.display_name: fresh["bio"]}).where(Profile.user_id == bob).run()
    with pytest.raises(DecryptionError):
        await api.services.profile_store.get_profile(bob)


@pytest.mark.asyncio
async def test_erasure_shreds_the_users_data_and_keeps_the_audit_chain(api: Api) -> None:
    alice, bob, _, outcome = await _flow(api)
    carol = uuid.uuid4()
    await _put_profile(api, carol, _profile("Carol"))
    open_key = await api.create_key(carol, bob)  # an open quiz about Bob
    open_answers = await api.answers(open_key, correct=False)
    backup = await Profile.select(Profile.bio).where(Profile.user_id == bob).first().run()  # "a backup"

    user_headers = api.headers(alice)
    service_headers = api.headers(uuid.uuid4(), role=api.settings.auth.service_role)
    refused = await api.client.delete(f"/users/{bob}", headers=user_headers)
    assert refused.status_code == 403 and refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "FORBIDDEN"
    unknown = await api.client.delete(f"/users/{uuid.uuid4()}", headers=service_headers)
    assert unknown.status_code == 404 and unknown.json()["code"] == "NOT_FOUND"
    assert (await api.client.delete("/users/not-a-uuid", headers=service_headers)).status_code in (400, 404)

    erased = await api.client.delete(f"/users/{bob}", headers=service_headers)
    assert erased.status_code == 200, erased.text
    assert erased.json()["status"] == "erased" and erased.json()["revokedKeys"] == 1
    again = await api.client.delete(f"/users/{bob}", headers=service_headers)
    assert again.status_code == 200 and again.json()["status"] == "already_erased"

    # The key is gone (tombstone only) and the profile row too.
    key_row = await UserDataKey.select().where(UserDataKey.user_id == bob).first().run()
    assert key_row["wrapped_key"] is None and key_row["key_id"] is None and key_row["destroyed_at"] is not None
    assert (await api.gql("{ me { displayName } }", bob))["data"]["me"] is None
    # A copy of the ciphertext taken before (a backup) no longer opens with the live keys.
    api.services.encryption.clear_cache()
    keyring = await api.services.encryption.keyring([bob])
    with pytest.raises(KeyDestroyedError):
        keyring.open(bob, FieldRef("profiles", "bio", bob), backup["bio"])
    # Writes for Bob are refused with a typed error; quizzes about him can no longer be started or answered.
    write = await api.client.put(f"/profiles/{bob}", json=_profile(), headers=api.headers(bob))
    assert write.status_code == 403 and write.json()["code"] == "FORBIDDEN"
    new_quiz = await api.gql("mutation($t: ID!) { createConnectionKey(targetUserId: $t) { id } }", carol, t=str(bob))
    assert new_quiz["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    late = await api.submit(carol, open_key["signedPayload"], open_answers)
    assert late["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    # Alice's attempt still loads: her answers readable, the feedback about Bob reads as erased.
    attempt = await api.services.key_store.get_attempt(uuid.UUID(outcome["attemptId"]))
    assert attempt is not None and attempt.responses is not None and attempt.feedback is None
    assert attempt.erased == ["feedback"] and attempt.score == outcome["score"]
    # Audited, and the chain still verifies.
    report = await verify_chain(api.services.audit.store, 100)
    assert report.broken is None
    actions = [e.action for batch in [b async for b in api.services.audit.store.stream(100)] for e in batch]
    assert actions.count("user.erased") == 1 and "profile.updated" in actions


@pytest.mark.asyncio
async def test_rewrap_is_batched_resumable_and_the_old_kek_can_go(api_factory: Start, database_url: str) -> None:
    first = await api_factory(make_settings(database_url, encryption={"keys": {"k1": KEK_1}, "active_key_id": "k1"}))
    users = [uuid.uuid4() for _ in range(3)]
    for user in users:
        await _put_profile(first, user, _profile())

    both = await api_factory(
        make_settings(database_url, encryption={"keys": {"k1": KEK_1, "k2": KEK_2}, "active_key_id": "k2"})
    )
    rotation = KeyRotation(both.services.db, both.services.encryption, both.services.audit, both.services.clock)
    seen: list[int] = []
    partial = await rotation.rewrap(batch_size=2, progress=seen.append, max_batches=1)  # "interrupted"
    assert (partial.done, partial.complete, seen) == (2, False, [2])
    counts = await both.services.encryption.store.count_by_kek()
    assert counts.current == {"k1": 1, "k2": 2}
    rest = await rotation.rewrap(batch_size=2)  # the rerun finishes only what is left
    assert (rest.done, rest.complete) == (1, True)
    assert (await both.services.encryption.store.count_by_kek()).current == {"k2": 3}

    only_new = await api_factory(make_settings(database_url, encryption={"keys": {"k2": KEK_2}, "active_key_id": "k2"}))
    for user in users:
        record = await only_new.services.profile_store.get_profile(user)
        assert record is not None and MARKERS["bio"] in (record.bio or "")
    audit = [e.action for b in [x async for x in only_new.services.audit.store.stream(100)] for e in b]
    assert audit.count("encryption.rotated") == 2


@pytest.mark.asyncio
async def test_data_rotation_reseals_with_fresh_keys_and_legacy_plaintext_gets_sealed(api: Api) -> None:
    _, bob, payload, outcome = await _flow(api)
    services = api.services
    before = await UserDataKey.select().where(UserDataKey.user_id == bob).first().run()
    raw_before = await Profile.select(Profile.bio).where(Profile.user_id == bob).first().run()

    # A row from before field encryption: plaintext written straight into the table.
    legacy = uuid.uuid4()
    await Profile.insert(
        Profile(
            user_id=legacy,
            display_name="Legacy Lee",
            bio=f"{MARKERS['bio']} legacy",
            prompts=json.dumps([{"question": "Q", "answer": "A"}]),
            consent_preferences="[]",
            demographic_segments="{}",
        )
    ).run()
    assert (await services.profile_store.get_profile(legacy)).bio == f"{MARKERS['bio']} legacy"  # readable meanwhile

    rotation = KeyRotation(services.db, services.encryption, services.audit, services.clock)
    sealed = await rotation.seal_legacy(batch_size=10)
    assert sealed.complete and sealed.done == 1
    raw_legacy = await Profile.select().where(Profile.user_id == legacy).first().run()
    assert all(is_ciphertext(raw_legacy[c]) for c in ("display_name", "bio", "prompts"))
    assert (await services.profile_store.get_profile(legacy)).bio == f"{MARKERS['bio']} legacy"

    cutoff = services.clock()
    first = await rotation.rotate_data(cutoff, batch_size=1, max_batches=1)
    assert first.done == 1 and not first.complete
    rest = await rotation.rotate_data(cutoff, batch_size=1)
    assert rest.complete and first.done + rest.done == 3  # alice, bob, legacy
    after = await UserDataKey.select().where(UserDataKey.user_id == bob).first().run()
    assert (
        after["key_id"] != before["key_id"] and after["previous_key_id"] == before["key_id"] and after["version"] == 2
    )
    raw_after = await Profile.select(Profile.bio).where(Profile.user_id == bob).first().run()
    assert raw_after["bio"] != raw_before["bio"] and after["key_id"] in raw_after["bio"]
    services.encryption.clear_cache()
    assert MARKERS["bio"] in ((await services.profile_store.get_profile(bob)).bio or "")
    quiz, _ = await services.key_store.get_quiz(uuid.UUID(payload["id"]))
    assert [q.prompt for q in quiz.questions] == [q["prompt"] for q in payload["questions"]]
    attempt = await services.key_store.get_attempt(uuid.UUID(outcome["attemptId"]))
    assert attempt is not None and all(MARKERS["answer"] in r.value for r in attempt.responses or [])


@pytest.mark.asyncio
async def test_a_data_rotation_in_another_process_does_not_break_reads_with_stale_cached_keys(api: Api) -> None:
    """``ck keys rotate-data`` runs in its own process: this one still has the old keys cached (current =
    old) while every value names the fresh key. Reads reload the owner's keys instead of failing."""
    alice, bob, payload, outcome = await _flow(api)
    carol = uuid.uuid4()
    await _put_profile(api, carol, _profile("Carol"))
    services = api.services
    key_id, attempt_id = uuid.UUID(payload["id"]), uuid.UUID(outcome["attemptId"])
    pending = await api.create_key(carol, bob)  # answered after the rotation, from the quiz cache
    pending_answers = await api.answers(pending, correct=False)
    assert (await services.profile_store.get_profile(bob)) is not None  # old keys now cached here
    assert await services.key_store.get_attempt(attempt_id) is not None
    before = (await services.encryption.keyring([bob])).get(bob)
    assert before is not None and before.current is not None

    # Another process: same database, its own key cache.
    elsewhere = FieldEncryption(services.encryption.keks, services.encryption.store, services.clock)
    rotation = KeyRotation(services.db, elsewhere, services.audit, services.clock)
    report = await rotation.rotate_data(services.clock(), batch_size=10)
    assert report.complete and report.done == 3  # alice, bob, carol
    raw = await Profile.select(Profile.bio).where(Profile.user_id == bob).first().run()
    assert token_key_id(raw["bio"]) != before.current.key_id
    assert (await services.encryption.keyring([bob])).get(bob) == before  # still stale here
    # That process (re)issues the cached quiz with Bob's fresh key, as its create_key would.
    cache_key, ref = quiz_cache_key(uuid.UUID(pending["id"])), quiz_cache_ref(uuid.UUID(pending["id"]))
    theirs = await elsewhere.keyring([bob])
    blob = (await services.cache.get(cache_key) or b"").decode()
    await services.cache.set(cache_key, theirs.seal(bob, ref, theirs.open(bob, ref, blob)).encode(), 600)

    profile = await services.profile_store.get_profile(bob)
    assert profile is not None and MARKERS["bio"] in (profile.bio or "")
    found = await services.key_store.get_quiz(key_id)
    assert found is not None
    assert [q.prompt for q in found[0].questions] == [q["prompt"] for q in payload["questions"]]
    attempt = await services.key_store.get_attempt(attempt_id)
    assert attempt is not None and all(MARKERS["answer"] in r.value for r in attempt.responses or [])
    assert attempt.feedback is not None
    refreshed = (await services.encryption.keyring([bob])).get(bob)
    assert refreshed is not None and refreshed.current is not None and refreshed.current.key_id != before.current.key_id
    me = await api.gql("{ me { displayName } }", alice)
    assert me["data"]["me"]["displayName"] == "Alice", me
    submitted = await api.submit(carol, pending["signedPayload"], pending_answers)
    assert "errors" not in submitted, submitted


@pytest.mark.asyncio
async def test_a_profile_write_racing_an_erasure_neither_fails_reads_nor_resurrects_the_profile(api: Api) -> None:
    _, bob, _, _ = await _flow(api)
    services = api.services
    row = await Profile.select().where(Profile.user_id == bob).first().run()
    # A writer that read (cached) Bob's key before the erasure, in another process.
    stale = FieldEncryption(services.encryption.keks, services.encryption.store, services.clock)
    assert not (await stale.keyring([bob])).is_destroyed(bob)
    await services.erasure.erase(bob, AuditActor.system())

    # A row sealed with the now destroyed key (left by a write that raced the erasure) reads as no profile.
    await Profile.insert(Profile(**row)).run()
    assert await services.profile_store.get_profile(bob) is None
    assert (await api.gql("{ me { displayName } }", bob))["data"]["me"] is None
    await Profile.delete().where(Profile.user_id == bob).run()

    # The stale writer's upsert is refused (its cached key is not destroyed, the key row is) and writes nothing.
    data = msgspec.convert(_profile(), ProfileInput)
    with pytest.raises(KeyDestroyedError):
        async with services.db.transaction():
            await ProfileStore(stale).upsert_profile(bob, data, services.clock())
    assert await Profile.select().where(Profile.user_id == bob).first().run() is None


@pytest.mark.asyncio
async def test_refuse_mode_treats_planted_plaintext_as_tampering(api_factory: Start, database_url: str) -> None:
    """With ``legacy_plaintext = "refuse"``, plaintext written into a sealed column (by someone with
    database access) is not served as the user's data; in ``read`` mode the same row reads as it is."""
    api = await api_factory(make_settings(database_url, encryption={"legacy_plaintext": "refuse"}))
    _, bob, _, _ = await _flow(api)
    services = api.services
    assert not await legacy_plaintext_left()
    planted = "planted by someone with write access"
    await Profile.update({Profile.bio: planted}).where(Profile.user_id == bob).run()
    services.encryption.clear_cache()
    with pytest.raises(DecryptionError):
        await services.profile_store.get_profile(bob)


def _base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"CK_SETTINGS_FILE": str(Path(__file__).parents[2] / "litestar.toml"), **extra}


def test_settings_refuse_bad_keys_and_merge_key_files(tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    with pytest.raises(SettingsError, match="not valid base64"):
        load_settings(environ={**env, "CK_ENCRYPTION__KEYS": '{"dev-kek-1": "***"}'})
    with pytest.raises(SettingsError, match="32 bytes"):
        load_settings(
            environ={**env, "CK_ENCRYPTION__KEYS": json.dumps({"dev-kek-1": base64.b64encode(b"x" * 16).decode()})}
        )
    with pytest.raises(SettingsError, match="active_key_id"):
        load_settings(environ={**env, "CK_ENCRYPTION__ACTIVE_KEY_ID": "missing"})
    with pytest.raises(SettingsError, match="key_file"):
        load_settings(environ={**env, "CK_ENCRYPTION__KEY_FILE": str(tmp_path / "absent.json")})
    json_file = tmp_path / "keys.json"
    json_file.write_text(json.dumps({"k-json": KEK_1}))
    toml_file = tmp_path / "keys.toml"
    toml_file.write_text(f'k-toml = "{KEK_2}"\n')
    for file, kid in ((json_file, "k-json"), (toml_file, "k-toml")):
        settings = load_settings(
            environ={**env, "CK_ENCRYPTION__KEY_FILE": str(file), "CK_ENCRYPTION__ACTIVE_KEY_ID": kid}
        )
        assert settings.encryption.active_key_id == kid
    from_env = load_settings(
        environ={**env, "CK_ENCRYPTION__KEYS": json.dumps({"k9": KEK_1}), "CK_ENCRYPTION__ACTIVE_KEY_ID": "k9"}
    )
    assert from_env.encryption.keys == {"k9": KEK_1}


def test_production_refuses_the_development_kek(tmp_path: Path) -> None:
    production = {
        **_base_env(tmp_path),
        "CK_SERVER__ENVIRONMENT": "production",
        "CK_AUTH__JWT_SECRET": "p" * 40,
        "CK_SIGNING__KEYS": json.dumps({"p1": "s" * 40}),
        "CK_SIGNING__ACTIVE_KEY_ID": "p1",
        "CK_AUDIT__DIGEST_KEY": "d" * 40,
    }
    with pytest.raises(SettingsError, match="encryption.keys still holds the development default"):
        load_settings(environ=production)
    own = {**production, "CK_ENCRYPTION__KEYS": json.dumps({"prod-1": base64.b64encode(os.urandom(32)).decode()})}
    with pytest.raises(SettingsError, match="active_key_id"):
        load_settings(environ=own)  # the active id must follow the keys
    try:
        settings = load_settings(environ={**own, "CK_ENCRYPTION__ACTIVE_KEY_ID": "prod-1"})
    except SettingsError as exc:  # another section's production check may still object; never ours
        assert "encryption" not in str(exc)
    else:
        assert settings.encryption.active_key_id == "prod-1"


def test_erase_cli_is_audited_and_idempotent(database_url: str) -> None:
    from click.testing import CliRunner

    from app.cli import ck

    env = {
        "CK_SETTINGS_FILE": str(Path(__file__).parents[2] / "litestar.toml"),
        "CK_DATABASE__URL": database_url,
        "CK_DATABASE__AUTO_MIGRATE": "true",
    }
    runner = CliRunner()
    seeded = runner.invoke(ck, ["seed-demo"], env=env)
    assert seeded.exit_code == 0, seeded.output
    alice = seeded.output.splitlines()[0].split("\t")[1]
    first = runner.invoke(ck, ["users", "erase", alice], env=env)
    assert first.exit_code == 0 and first.output.startswith("erased"), first.output
    second = runner.invoke(ck, ["users", "erase", alice], env=env)
    assert second.exit_code == 0 and second.output.startswith("already erased"), second.output
    unknown = runner.invoke(ck, ["users", "erase", str(uuid.uuid4())], env=env)
    assert unknown.exit_code != 0 and "NOT_FOUND" in unknown.output
    status = runner.invoke(ck, ["keys", "status"], env=env)
    assert status.exit_code == 0 and "erased users: 1" in status.output, status.output
    assert "--batch-size" in runner.invoke(ck, ["keys", "rotate", "--help"], env=env).output
    verified = runner.invoke(ck, ["audit", "verify"], env=env)
    assert verified.exit_code == 0 and "chain intact" in verified.output, verified.output


def test_breakdown_feedback_moved_to_another_line_does_not_decrypt() -> None:
    """Each breakdown line's feedback is bound to its position and question, not just to the column."""
    owner, attempt_id = uuid.uuid4(), uuid.uuid4()
    keyring = Keyring({owner: UserKeys(new_data_key())})
    lines = [
        {"question_id": str(uuid.uuid4()), "feedback": "first line's feedback"},
        {"question_id": str(uuid.uuid4()), "feedback": "second line's feedback"},
    ]
    sealed = json.loads(seal_breakdown(keyring, owner, attempt_id, "breakdown", json.dumps(lines)))
    refs = [breakdown_feedback_ref(attempt_id, "breakdown", i, line) for i, line in enumerate(sealed)]
    assert [keyring.open(owner, refs[i], sealed[i]["feedback"]) for i in (0, 1)] == [
        "first line's feedback",
        "second line's feedback",
    ]
    with pytest.raises(DecryptionError):  # swapped lines
        keyring.open(owner, refs[1], sealed[0]["feedback"])
    with pytest.raises(DecryptionError):  # the same line of another attempt
        keyring.open(owner, breakdown_feedback_ref(uuid.uuid4(), "breakdown", 0, sealed[0]), sealed[0]["feedback"])
