"""The pure field-encryption module: format, associated data, tampering, key wrapping, the keyring."""

from __future__ import annotations

import base64
import uuid

import pytest

from app.domain.field_crypto import (
    DataKey,
    DecryptionError,
    FieldRef,
    KeyDestroyedError,
    Keyring,
    MalformedCiphertextError,
    UnknownKeyError,
    UserKeys,
    decrypt_value,
    encrypt_value,
    is_ciphertext,
    new_data_key,
    token_key_id,
    unwrap_key,
    wrap_key,
)

ROW = uuid.UUID("11111111-1111-4111-8111-111111111111")
REF = FieldRef("profiles", "bio", ROW)


def _flip(token: str, index: int) -> str:
    prefix, body = token.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[index] ^= 0x01
    return f"{prefix}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def test_round_trip_format_and_fresh_nonces() -> None:
    key = new_data_key()
    token = encrypt_value(key, "I like slow mornings ☕", REF)
    assert token.startswith(f"ck1.{key.key_id}.") and is_ciphertext(token) and token_key_id(token) == key.key_id
    assert "slow" not in token
    assert decrypt_value(key, token, REF) == "I like slow mornings ☕"
    assert encrypt_value(key, "same", REF) != encrypt_value(key, "same", REF)  # random 96-bit nonce each time


@pytest.mark.parametrize(
    "elsewhere",
    [
        FieldRef("profiles", "bio", uuid.UUID("22222222-2222-4222-8222-222222222222")),  # another row
        FieldRef("profiles", "display_name", ROW),  # another column
        FieldRef("connection_key_questions", "bio", ROW),  # another table
    ],
)
def test_value_moved_to_another_place_does_not_decrypt(elsewhere: FieldRef) -> None:
    key = new_data_key()
    with pytest.raises(DecryptionError):
        decrypt_value(key, encrypt_value(key, "secret", REF), elsewhere)


@pytest.mark.parametrize("index", [0, 11, 12, -1])  # nonce, nonce end, ciphertext, tag
def test_tampered_bytes_fail(index: int) -> None:
    key = new_data_key()
    with pytest.raises(DecryptionError):
        decrypt_value(key, _flip(encrypt_value(key, "secret value", REF), index), REF)


def test_wrong_key_and_relabelled_key_id_fail() -> None:
    key, other = new_data_key(), new_data_key()
    token = encrypt_value(key, "secret", REF)
    with pytest.raises(UnknownKeyError):
        decrypt_value(other, token, REF)
    relabelled = token.replace(key.key_id, other.key_id, 1)  # same id as `other`, sealed with `key`
    with pytest.raises(DecryptionError):
        decrypt_value(other, relabelled, REF)


@pytest.mark.parametrize("cut", [1, 10, 30])
def test_truncated_fails(cut: int) -> None:
    key = new_data_key()
    token = encrypt_value(key, "a longer secret value", REF)
    with pytest.raises(DecryptionError):
        decrypt_value(key, token[:-cut], REF)


@pytest.mark.parametrize(
    "bad", ["", "plain text", "ck1.", "ck1.k.", "ck2.k.AAAA", "ck1.k.AA", "ck1.k.!!!!", "ck1.k.AAAA.x"]
)
def test_malformed_tokens_are_typed(bad: str) -> None:
    with pytest.raises(MalformedCiphertextError):
        decrypt_value(DataKey("k", b"\0" * 32), bad, REF)


def test_data_key_validation_and_secret_not_in_repr() -> None:
    key = new_data_key()
    assert key.secret.hex() not in repr(key) and str(list(key.secret)) not in repr(key)
    with pytest.raises(ValueError):
        DataKey("k", b"short")
    with pytest.raises(ValueError):
        DataKey("has.dot", b"\0" * 32)


def test_wrap_binds_owner_context() -> None:
    kek, key = b"k" * 32, new_data_key()
    wrapped = wrap_key(kek, key, b"user-a")
    assert unwrap_key(kek, key.key_id, wrapped, b"user-a") == key
    with pytest.raises(DecryptionError):
        unwrap_key(kek, key.key_id, wrapped, b"user-b")  # moved to another user
    with pytest.raises(DecryptionError):
        unwrap_key(b"x" * 32, key.key_id, wrapped, b"user-a")  # another KEK
    with pytest.raises(DecryptionError):
        unwrap_key(kek, key.key_id, wrapped[:20], b"user-a")


def test_keyring_previous_key_legacy_plaintext_and_destroyed_owner() -> None:
    owner, erased, stranger = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    old, new = new_data_key(), new_data_key()
    before = Keyring({owner: UserKeys(old)}).seal(owner, REF, "written before the rotation")
    keyring = Keyring({owner: UserKeys(new, previous=old), erased: UserKeys(None)})
    assert keyring.open(owner, REF, before) == "written before the rotation"
    assert keyring.needs_resealing(owner, before) and not keyring.needs_resealing(owner, keyring.seal(owner, REF, "x"))
    assert keyring.open(owner, REF, "legacy plaintext") == "legacy plaintext"
    assert keyring.needs_resealing(owner, "legacy plaintext")
    assert keyring.is_destroyed(erased) and not keyring.is_destroyed(stranger)
    with pytest.raises(KeyDestroyedError):
        keyring.seal(erased, REF, "x")
    with pytest.raises(KeyDestroyedError):
        keyring.open(erased, REF, before)
    with pytest.raises(UnknownKeyError):
        keyring.open(stranger, REF, before)
    assert keyring.seal_columns(owner, "profiles", ROW, {"bio": None}) == {"bio": None}


def test_a_refusing_keyring_rejects_plaintext_reads_but_reseal_takes_a_writers_plaintext() -> None:
    owner = uuid.uuid4()
    old, new = new_data_key(), new_data_key()
    refusing = Keyring({owner: UserKeys(new, previous=old)}, read_plaintext=False)
    with pytest.raises(DecryptionError):
        refusing.open(owner, REF, "planted plaintext")
    fresh = refusing.reseal(owner, REF, "a writer's plaintext")
    assert token_key_id(fresh) == new.key_id and refusing.open(owner, REF, fresh) == "a writer's plaintext"
    older = Keyring({owner: UserKeys(old)}).seal(owner, REF, "sealed before the rotation")
    moved = refusing.reseal(owner, REF, older)
    assert token_key_id(moved) == new.key_id and refusing.open(owner, REF, moved) == "sealed before the rotation"


def test_lacks_key_for_names_tokens_under_a_key_the_keyring_does_not_hold() -> None:
    owner, erased, stranger = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    old, new = new_data_key(), new_data_key()
    stale = Keyring({owner: UserKeys(old), erased: UserKeys(None)})
    rotated = Keyring({owner: UserKeys(new, previous=old)})
    fresh_token = rotated.seal(owner, REF, "sealed after a rotation elsewhere")
    assert stale.lacks_key_for(owner, fresh_token)  # the stale copy must be reloaded
    assert not stale.lacks_key_for(owner, stale.seal(owner, REF, "x"))
    assert not rotated.lacks_key_for(owner, stale.seal(owner, REF, "x"))  # previous key covers it
    assert not stale.lacks_key_for(owner, None) and not stale.lacks_key_for(owner, "legacy plaintext")
    assert not stale.lacks_key_for(erased, fresh_token) and not stale.lacks_key_for(stranger, fresh_token)


def test_writer_seals_token_shaped_feedback_verbatim() -> None:
    """A scorer's feedback that happens to look like a token is a writer's plaintext: sealed, never opened."""
    import datetime as dt

    import msgspec

    from app.db.key_store import AttemptRow, open_attempt, seal_attempt

    requester, target = uuid.uuid4(), uuid.uuid4()
    keyring = Keyring({requester: UserKeys(new_data_key()), target: UserKeys(new_data_key())})
    lookalike = "ck1.abc.AAAA"
    assert is_ciphertext(lookalike)
    now = dt.datetime.now(dt.UTC)
    line = {"questionId": str(uuid.uuid4()), "kind": "FREE_TEXT", "score": 0.5, "feedback": lookalike}
    row = AttemptRow(
        id=uuid.uuid4(),
        connection_key_id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        requester_id=requester,
        target_id=target,
        responses=msgspec.json.encode([]).decode(),
        total_elapsed_ms=None,
        score=0.5,
        passed=False,
        breakdown=msgspec.json.encode([line]).decode(),
        shadow_breakdown=msgspec.json.encode([line]).decode(),
        experiments="{}",
        feedback=msgspec.json.encode([lookalike]).decode(),
        unlock_state="LOCKED",
        retry_available_at=None,
        started_at=now,
        submitted_at=now,
    )
    sealed = seal_attempt(keyring, row)
    stored = msgspec.json.decode(sealed.breakdown)[0]["feedback"]
    assert is_ciphertext(stored) and stored != lookalike and lookalike not in sealed.breakdown
    record = open_attempt(msgspec.structs.asdict(sealed), keyring)
    assert [line["feedback"] for line in record.breakdown] == [lookalike]
    assert [line["feedback"] for line in record.shadow_breakdown] == [lookalike]
    assert record.feedback == [lookalike] and record.responses == [] and record.erased == []
