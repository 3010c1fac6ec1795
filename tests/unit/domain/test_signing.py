"""PayloadSigner: round trip, tampering, key rotation, expiry and junk input."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.domain.signing import PayloadClaims, PayloadError, PayloadExpired, PayloadInvalid, PayloadSigner

K1 = "first-signing-key-0123456789abcdef"
K2 = "second-signing-key-0123456789abcdef"
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
TTL = 300
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(signer: PayloadSigner, now: datetime = NOW) -> PayloadClaims:
    return signer.claims_for(
        key_id=uuid.UUID(int=1),
        conversation_id=uuid.UUID(int=2),
        requester_id=uuid.UUID(int=3),
        target_id=uuid.UUID(int=4),
        question_ids=[uuid.UUID(int=10), uuid.UUID(int=11)],
        now=now,
    )


@pytest.fixture
def signer() -> PayloadSigner:
    return PayloadSigner({"k1": K1}, "k1", TTL)


def test_round_trip(signer: PayloadSigner) -> None:
    c = claims(signer)
    assert c.issued_at == int(NOW.timestamp())
    assert c.expires_at == c.issued_at + TTL
    assert c.expires_at_datetime == NOW + timedelta(seconds=TTL)
    payload = signer.sign(c)
    version, kid, body, signature = payload.split(".")
    assert (version, kid) == ("v1", "k1")
    assert all(ch in B64 for ch in body + signature)
    assert signer.verify(payload, NOW) == c


def test_active_key_must_be_configured() -> None:
    with pytest.raises(ValueError, match="active key"):
        PayloadSigner({"k1": K1}, "k2", TTL)


def test_each_changed_character_outside_the_signature_is_refused(signer: PayloadSigner) -> None:
    payload = signer.sign(claims(signer))
    signature_start = payload.rindex(".") + 1
    for i in range(signature_start):
        replacement = "B" if payload[i] != "B" else "C"
        tampered = payload[:i] + replacement + payload[i + 1 :]
        with pytest.raises(PayloadInvalid):
            signer.verify(tampered, NOW)


def test_changed_signature_characters_are_refused(signer: PayloadSigner) -> None:
    payload = signer.sign(claims(signer))
    signature_start = payload.rindex(".") + 1
    for i in range(signature_start, len(payload)):
        for replacement in ("A", "z", "-"):
            if payload[i] == replacement:
                continue
            with pytest.raises(PayloadInvalid):
                signer.verify(payload[:i] + replacement + payload[i + 1 :], NOW)


def test_any_other_spelling_of_the_signature_is_refused(signer: PayloadSigner) -> None:
    # Regression: the last base64url character carries 2 unused bits; a lenient decode of the
    # signature accepted 3 other spellings of every payload (signature malleability).
    payload = signer.sign(claims(signer))
    accepted = []
    for replacement in B64:
        if replacement == payload[-1]:
            continue
        try:
            signer.verify(payload[:-1] + replacement, NOW)
        except PayloadInvalid:
            continue
        accepted.append(replacement)
    assert accepted == []


def test_claims_rewritten_and_resigned_with_another_secret_are_refused(signer: PayloadSigner) -> None:
    payload = signer.sign(claims(signer))
    version, kid, body, _ = payload.split(".")
    data = json.loads(unb64(body))
    data["requester_id"] = str(uuid.UUID(int=99))
    forged_body = b64(json.dumps(data).encode())
    attacker = PayloadSigner({"k1": "attacker-chosen-secret-0123456789abcdef"}, "k1", TTL)
    forged_signature = attacker.sign(claims(attacker)).split(".")[3]
    for forged in (
        f"{version}.{kid}.{forged_body}.{payload.split('.')[3]}",
        f"{version}.{kid}.{forged_body}.{forged_signature}",
    ):
        with pytest.raises(PayloadInvalid):
            signer.verify(forged, NOW)


def test_payload_cannot_be_moved_to_another_key_id() -> None:
    both = PayloadSigner({"k1": K1, "k2": K1}, "k1", TTL)  # same secret under two ids
    payload = both.sign(claims(both))
    moved = payload.replace(".k1.", ".k2.", 1)
    with pytest.raises(PayloadInvalid, match="signature"):
        both.verify(moved, NOW)


def test_unknown_key_id_is_invalid(signer: PayloadSigner) -> None:
    other = PayloadSigner({"k9": K1}, "k9", TTL)
    with pytest.raises(PayloadInvalid, match="unknown key"):
        signer.verify(other.sign(claims(other)), NOW)


def test_key_rotation_keeps_old_payloads_valid_until_the_key_is_removed() -> None:
    old = PayloadSigner({"k1": K1}, "k1", TTL)
    payload = old.sign(claims(old))

    rotated = PayloadSigner({"k1": K1, "k2": K2}, "k2", TTL)
    assert rotated.verify(payload, NOW) == claims(old)
    new_payload = rotated.sign(claims(rotated))
    assert new_payload.split(".")[1] == "k2"
    assert rotated.verify(new_payload, NOW) == claims(rotated)
    with pytest.raises(PayloadInvalid):  # the old deployment does not know k2
        old.verify(new_payload, NOW)

    retired = PayloadSigner({"k2": K2}, "k2", TTL)
    with pytest.raises(PayloadInvalid, match="unknown key"):
        retired.verify(payload, NOW)
    assert retired.verify(new_payload, NOW) == claims(rotated)


def test_same_key_id_with_changed_secret_refuses_old_payloads() -> None:
    payload = PayloadSigner({"k1": K1}, "k1", TTL).sign(claims(PayloadSigner({"k1": K1}, "k1", TTL)))
    with pytest.raises(PayloadInvalid, match="signature"):
        PayloadSigner({"k1": K2}, "k1", TTL).verify(payload, NOW)


def test_expiry_boundary(signer: PayloadSigner) -> None:
    payload = signer.sign(claims(signer))
    expiry = NOW + timedelta(seconds=TTL)
    assert signer.verify(payload, expiry - timedelta(microseconds=1)).expires_at == int(expiry.timestamp())
    with pytest.raises(PayloadExpired):
        signer.verify(payload, expiry)
    with pytest.raises(PayloadExpired):
        signer.verify(payload, expiry + timedelta(days=1))
    assert issubclass(PayloadExpired, PayloadError) and not issubclass(PayloadExpired, PayloadInvalid)


def test_expiry_is_checked_only_after_authenticity(signer: PayloadSigner) -> None:
    payload = signer.sign(claims(signer))
    tampered = payload[:-5] + ("AAAAA" if payload[-5:] != "AAAAA" else "BBBBB")
    with pytest.raises(PayloadInvalid):
        signer.verify(tampered, NOW + timedelta(days=1))


def test_issue_time_truncates_to_whole_seconds(signer: PayloadSigner) -> None:
    c = claims(signer, NOW + timedelta(milliseconds=999))
    assert c.issued_at == int(NOW.timestamp())


@pytest.mark.parametrize(
    "junk",
    [
        "",
        ".",
        "...",
        "v1",
        "v1.k1",
        "v1.k1.body",
        "v1.k1.body.sig.extra",
        "v1.k1..",
        "v1.k1.e30.",
        "v1.k1.e30.!!!!",
        "v1.k1.e30.c2ln=",
        "v1.k1.e30.c2ln",
        "v2.k1.e30.c2ln",
        "V1.k1.e30.c2ln",
        "\x00\x01.\x02.\x03.\x04",
        "v1.k1." + "A" * 9000 + ".sig",
        "🙂.🙂.🙂.🙂",
    ],
)
def test_junk_is_invalid(signer: PayloadSigner, junk: str) -> None:
    with pytest.raises(PayloadInvalid):
        signer.verify(junk, NOW)


def test_non_string_is_invalid(signer: PayloadSigner) -> None:
    with pytest.raises(PayloadInvalid):
        signer.verify(b"v1.k1.a.b", NOW)  # type: ignore[arg-type]


def test_wrong_version_of_an_otherwise_valid_payload(signer: PayloadSigner) -> None:
    payload = signer.sign(claims(signer))
    with pytest.raises(PayloadInvalid, match="format"):
        signer.verify("v2" + payload[2:], NOW)


def test_authentic_but_malformed_claims_are_invalid(signer: PayloadSigner) -> None:
    # A holder of the key could sign any bytes; the decoder must still refuse wrong shapes.
    for body in (b"not json", b"{}", b'{"key_id": "x"}', json.dumps({"unexpected": 1}).encode()):
        signed_part = f"v1.k1.{b64(body)}"
        payload = f"{signed_part}.{b64(signer._mac('k1', signed_part))}"
        with pytest.raises(PayloadInvalid, match="malformed"):
            signer.verify(payload, NOW)


# ------------------------------------------------------------------ submission digests


def test_request_digest_is_keyed_by_the_payloads_signing_key_and_covers_the_request() -> None:
    from app.domain.contract import AnswerInput, canonical_submission

    first = PayloadSigner({"k1": K1, "k2": K2}, "k1", TTL)
    payload = first.sign(claims(first))
    submitter = uuid.UUID(int=3)
    answers = [AnswerInput(uuid.UUID(int=10), "tea"), AnswerInput(uuid.UUID(int=11), "hills", elapsed_ms=5)]
    digest = first.request_digest(payload, canonical_submission(submitter, answers))
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert "tea" not in digest
    # The same request gives the same digest, whatever the answers' order, after the active key rotated.
    rotated = PayloadSigner({"k1": K1, "k2": K2}, "k2", TTL)
    assert rotated.request_digest(payload, canonical_submission(submitter, answers[::-1])) == digest
    # Anything else changes it: an answer, a timing, the submitter, the payload, the key's secret.
    changed = [AnswerInput(uuid.UUID(int=10), "tea!"), answers[1]]
    assert first.request_digest(payload, canonical_submission(submitter, changed)) != digest
    timed = [answers[0], AnswerInput(uuid.UUID(int=11), "hills", elapsed_ms=6)]
    assert first.request_digest(payload, canonical_submission(submitter, timed)) != digest
    assert first.request_digest(payload, canonical_submission(uuid.UUID(int=99), answers)) != digest
    other_payload = first.sign(claims(first, NOW + timedelta(seconds=1)))
    assert first.request_digest(other_payload, canonical_submission(submitter, answers)) != digest
    other_secret = PayloadSigner({"k1": K2 + "x"}, "k1", TTL)
    assert other_secret.request_digest(payload, canonical_submission(submitter, answers)) != digest
