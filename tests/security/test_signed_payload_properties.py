"""Property-based tests of the signed-payload parser (hypothesis): authentic payloads round-trip; any
mutation, truncation or extension, any arbitrary text, a payload re-signed with another key and one signed
with a retired key are refused with the typed error and never with another exception."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain import signing
from app.domain.signing import PayloadClaims, PayloadError, PayloadInvalid, PayloadKeyRetired, PayloadSigner

KEY = "property-signing-key-0123456789abcdef"
OTHER = "another-signing-key-0123456789abcdef"
TTL = 300
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SIGNER = PayloadSigner({"k1": KEY}, "k1", TTL)

uuids = st.uuids()
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@st.composite
def claims(draw: st.DrawFn) -> PayloadClaims:
    return SIGNER.claims_for(
        key_id=draw(uuids),
        conversation_id=draw(uuids),
        requester_id=draw(uuids),
        target_id=draw(uuids),
        question_ids=draw(st.lists(uuids, max_size=12)),
        now=draw(moments),
    )


def _refused(signer: PayloadSigner, payload: str, now: datetime) -> PayloadInvalid:
    with pytest.raises(PayloadInvalid) as info:
        signer.verify(payload, now)
    return info.value


def _issued(claim: PayloadClaims) -> datetime:
    return datetime.fromtimestamp(claim.issued_at, tz=UTC)


@given(claims())
def test_round_trip(claim: PayloadClaims) -> None:
    payload = SIGNER.sign(claim)
    assert payload.isascii()
    assert SIGNER.verify(payload, _issued(claim)) == claim
    assert SIGNER.verify(payload, _issued(claim) + timedelta(seconds=TTL - 1)) == claim


@given(claims(), st.data())
def test_any_single_character_change_is_refused(claim: PayloadClaims, data: st.DataObject) -> None:
    payload = SIGNER.sign(claim)
    index = data.draw(st.integers(0, len(payload) - 1))
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c != payload[index]))
    mutated = payload[:index] + replacement + payload[index + 1 :]
    _refused(SIGNER, mutated, _issued(claim))


@given(claims(), st.data())
def test_truncation_and_extension_are_refused(claim: PayloadClaims, data: st.DataObject) -> None:
    payload = SIGNER.sign(claim)
    cut = data.draw(st.integers(0, len(payload) - 1))
    _refused(SIGNER, payload[:cut], _issued(claim))
    suffix = data.draw(st.text(min_size=1, max_size=40))
    _refused(SIGNER, payload + suffix, _issued(claim))
    prefix = data.draw(st.text(min_size=1, max_size=40))
    _refused(SIGNER, prefix + payload, _issued(claim))


@given(claims(), st.data())
def test_swapping_parts_between_payloads_is_refused(claim: PayloadClaims, data: st.DataObject) -> None:
    other = data.draw(claims().filter(lambda c: c != claim))
    version, kid, _body, signature = SIGNER.sign(claim).split(".")
    other_body = SIGNER.sign(other).split(".")[2]
    _refused(SIGNER, f"{version}.{kid}.{other_body}.{signature}", _issued(claim))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_arbitrary_text_raises_only_the_typed_error(text: str) -> None:
    _refused(SIGNER, text, NOW)


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(st.text(B64URL, max_size=300), st.text(B64URL, max_size=60), st.sampled_from(["k1", "k2", "", "K1"]))
def test_well_shaped_forgeries_raise_only_the_typed_error(body: str, signature: str, kid: str) -> None:
    _refused(SIGNER, f"v1.{kid}.{body}.{signature}", NOW)


@given(claims())
def test_resigned_with_another_key_is_refused(claim: PayloadClaims) -> None:
    same_kid = PayloadSigner({"k1": OTHER}, "k1", TTL)
    _refused(SIGNER, same_kid.sign(claim), _issued(claim))
    other_kid = PayloadSigner({"k9": OTHER}, "k9", TTL)
    assert "unknown key" in str(_refused(SIGNER, other_kid.sign(claim), _issued(claim)))


@given(claims(), st.integers(0, TTL - 1))
def test_a_retired_key_verifies_nothing_from_its_retirement(claim: PayloadClaims, after: int) -> None:
    old = PayloadSigner({"k1": KEY, "k2": OTHER}, "k1", TTL)
    payload = old.sign(claim)
    issued = _issued(claim)
    retired_at = issued + timedelta(seconds=after)
    rotated = PayloadSigner({"k1": KEY, "k2": OTHER}, "k2", TTL, retired={"k1": retired_at})
    if after > 0:
        assert rotated.verify(payload, issued) == claim  # in-flight payloads survive a planned rotation
    with pytest.raises(PayloadKeyRetired):
        rotated.verify(payload, retired_at)
    assert isinstance(_refused(rotated, payload, retired_at), PayloadKeyRetired)
    # The new key signs and verifies as before.
    assert rotated.verify(rotated.sign(claim), issued) == claim


def test_retirement_is_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="active key"):
        PayloadSigner({"k1": KEY}, "k1", TTL, retired={"k1": NOW})
    with pytest.raises(ValueError, match="timezone"):
        PayloadSigner({"k1": KEY, "k2": OTHER}, "k2", TTL, retired={"k1": NOW.replace(tzinfo=None)})


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = signing.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    payload = SIGNER.sign(
        SIGNER.claims_for(
            key_id=uuid.uuid4(),
            conversation_id=uuid.uuid4(),
            requester_id=uuid.uuid4(),
            target_id=uuid.uuid4(),
            question_ids=[],
            now=NOW,
        )
    )
    SIGNER.verify(payload, NOW)
    with pytest.raises(PayloadError):
        SIGNER.verify(payload[:-1] + ("A" if payload[-1] != "A" else "B"), NOW)
    assert len(calls) == 2
