"""Access tokens as RFC 8725 asks: forged, truncated, re-signed, ``alg: none``, algorithm-confused,
mistyped, with critical headers or an embedded key, for another audience or issuer, expired or not yet
valid (with the configured clock skew) are all refused as UNAUTHENTICATED, at the verifier and at the
REST and GraphQL edges."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from app.auth import JwtVerifier
from app.errors import ErrorCode, ServiceError
from app.settings import AuthSettings, Settings
from tests.conftest import make_settings
from tests.integration.conftest import Api

SECRET = "security-suite-jwt-secret-" + "0123456789abcdef" * 3
OTHER_SECRET = "another-projects-jwt-secret-" + "fedcba9876543210" * 3
USER = uuid.UUID("0b5c6a4e-61f6-4c1b-9a0e-2f4f7f0c9d11")
LEEWAY = 30


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": str(USER), "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _hs256(claims: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers or None)


def _raw(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> str:
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {"kid": "rsa-1"}
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True) | {"kid": "ec-1"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}), encoding="utf-8")
    return str(path)


def _verifier(**overrides: Any) -> JwtVerifier:
    base = AuthSettings(jwt_secret=SECRET, leeway_seconds=LEEWAY)
    return JwtVerifier(msgspec.structs.replace(base, **overrides))


async def _reason(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(ServiceError) as info:
        await verifier.verify(token)
    assert info.value.code is ErrorCode.UNAUTHENTICATED
    assert token not in info.value.message
    return info.value.extra["reason"]


@pytest.mark.asyncio
async def test_a_valid_token_passes() -> None:
    assert (await _verifier().verify(_hs256(_claims()))).user_id == USER
    for typ in ("JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt"):
        assert (await _verifier().verify(_hs256(_claims(), typ=typ))).user_id == USER


@pytest.mark.asyncio
async def test_forged_signature() -> None:
    header, payload, signature = _hs256(_claims()).split(".")
    forged_payload = _b64(json.dumps(_claims(role="service_role")).encode())
    assert await _reason(_verifier(), f"{header}.{forged_payload}.{signature}") == "bad_signature"
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BA")
    assert await _reason(_verifier(), f"{header}.{payload}.{flipped}") == "bad_signature"


@pytest.mark.parametrize("cut", [1, 10, 43])
@pytest.mark.asyncio
async def test_truncated(cut: int) -> None:
    token = _hs256(_claims())
    assert await _reason(_verifier(), token[:-cut]) in {"bad_signature", "malformed"}
    assert await _reason(_verifier(), token.rsplit(".", 1)[0]) == "malformed"
    assert await _reason(_verifier(), token.rsplit(".", 1)[0] + ".") in {"bad_signature", "malformed"}


@pytest.mark.asyncio
async def test_resigned_with_another_key(jwks_file: str, rsa_key: rsa.RSAPrivateKey) -> None:
    assert await _reason(_verifier(), _hs256(_claims(), secret=OTHER_SECRET)) == "bad_signature"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    assert await _reason(_verifier(jwks_file=jwks_file), token) == "bad_signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
@pytest.mark.asyncio
async def test_alg_none(alg: str) -> None:
    token = _raw({"alg": alg, "typ": "JWT"}, _claims(role="service_role"), lambda _: b"")
    assert await _reason(_verifier(), token) == "alg_not_allowed"
    assert await _reason(_verifier(), token.rstrip(".") + ".") == "alg_not_allowed"


@pytest.mark.parametrize("family", ["rsa", "ec"])
@pytest.mark.asyncio
async def test_algorithm_confusion_hs256_signed_with_the_public_key(
    family: str, jwks_file: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    public = (rsa_key if family == "rsa" else ec_key).public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": f"{family}-1"}
    token = _raw(header, _claims(role="service_role"), lambda data: hmac.new(pem, data, hashlib.sha256).digest())
    # HS256 only ever meets the project secret, whatever the kid says.
    assert await _reason(_verifier(jwks_file=jwks_file), token) == "bad_signature"
    # RS/ES256 naming a key of the other family is refused before any signature check.
    other = "ec-1" if family == "rsa" else "rsa-1"
    alg = {"rsa": "RS256", "ec": "ES256"}[family]
    confused = jwt.encode(_claims(), rsa_key if family == "rsa" else ec_key, algorithm=alg, headers={"kid": other})
    assert await _reason(_verifier(jwks_file=jwks_file), confused) == "key_mismatch"


@pytest.mark.asyncio
async def test_wrong_audience_and_issuer() -> None:
    assert await _reason(_verifier(), _hs256(_claims(aud="another-api"))) == "bad_audience"
    assert await _reason(_verifier(), _hs256(_claims(aud=None))) in {"bad_audience", "missing_claim"}
    issuer = "https://project.supabase.co/auth/v1"
    strict = _verifier(issuer=issuer)
    assert (await strict.verify(_hs256(_claims(iss=issuer)))).user_id == USER
    assert await _reason(strict, _hs256(_claims(iss="https://evil.example/auth/v1"))) == "bad_issuer"
    assert await _reason(strict, _hs256(_claims())) in {"bad_issuer", "missing_claim"}


@pytest.mark.asyncio
async def test_expiry_with_clock_skew() -> None:
    now = int(time.time())
    assert await _reason(_verifier(), _hs256(_claims(exp=now - LEEWAY - 5))) == "expired"
    assert (await _verifier().verify(_hs256(_claims(exp=now - LEEWAY + 10)))).user_id == USER  # within skew
    assert await _reason(_verifier(), _hs256(_claims(exp=None))) == "missing_claim"
    assert await _reason(_verifier(leeway_seconds=0), _hs256(_claims(exp=now - 5))) == "expired"


@pytest.mark.asyncio
async def test_not_yet_valid_with_clock_skew() -> None:
    now = int(time.time())
    assert await _reason(_verifier(), _hs256(_claims(nbf=now + LEEWAY + 60))) == "not_yet_valid"
    assert (await _verifier().verify(_hs256(_claims(nbf=now + LEEWAY - 10)))).user_id == USER
    assert await _reason(_verifier(), _hs256(_claims(iat=now + LEEWAY + 60))) == "not_yet_valid"
    assert (await _verifier().verify(_hs256(_claims(iat=now + LEEWAY - 10)))).user_id == USER


@pytest.mark.parametrize("typ", ["JWS", "id_token+jwt", "logout+jwt", "secevent+jwt", "", 7, ["JWT"]])
@pytest.mark.asyncio
async def test_wrong_type(typ: Any) -> None:
    # Built by hand: PyJWT would drop an empty typ and refuse a non-string one.
    token = _raw(
        {"alg": "HS256", "typ": typ}, _claims(), lambda data: hmac.new(SECRET.encode(), data, "sha256").digest()
    )
    assert await _reason(_verifier(), token) == "bad_type"


@pytest.mark.asyncio
async def test_critical_headers_are_refused() -> None:
    assert await _reason(_verifier(), _hs256(_claims(), crit=["exp"], exp=1)) in {"crit_not_supported", "malformed"}

    def sign(data: bytes) -> bytes:
        return hmac.new(SECRET.encode(), data, hashlib.sha256).digest()

    # PyJWT already refuses extensions it does not know while reading the header...
    assert (
        await _reason(_verifier(), _raw({"alg": "HS256", "crit": ["urn:x"], "urn:x": 1}, _claims(), sign))
        == "malformed"
    )
    # ...and understands b64 (RFC 7797), which this service never needs: refused too.
    assert await _reason(_verifier(), _raw({"alg": "HS256", "crit": ["b64"], "b64": True}, _claims(), sign)) == (
        "crit_not_supported"
    )


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
@pytest.mark.asyncio
async def test_a_token_cannot_bring_its_own_key(member: str, jwks_file: str) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    own = RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    values = {"jwk": own, "jku": "https://evil.example/jwks.json", "x5u": "https://evil.example/c.pem", "x5c": ["MII"]}
    token = jwt.encode(_claims(role="service_role"), attacker, algorithm="RS256", headers={member: values[member]})
    assert await _reason(_verifier(jwks_file=jwks_file), token) in {"bad_signature", "unknown_kid"}


# --- at the edges ---------------------------------------------------------------------------------

SQLITE = pytest.mark.parametrize("backend", ["sqlite"])


@SQLITE
@pytest.mark.asyncio
async def test_bad_tokens_are_refused_over_rest_and_graphql(
    api_factory: Callable[[Settings], Awaitable[Api]], database_url: str
) -> None:
    api = await api_factory(make_settings(database_url, auth={"jwt_secret": SECRET}))
    now = int(time.time())
    token = _hs256(_claims())
    bad = [
        _hs256(_claims(), secret=OTHER_SECRET),
        token[:-5],
        _raw({"alg": "none"}, _claims(), lambda _: b""),
        _hs256(_claims(aud="elsewhere")),
        _hs256(_claims(exp=now - 3600)),
        _hs256(_claims(), typ="id_token+jwt"),
    ]
    body = {"displayName": "X", "prompts": [], "consentPreferences": []}
    assert (
        await api.client.put(f"/profiles/{USER}", json=body, headers={"Authorization": f"Bearer {token}"})
    ).status_code == 200
    for candidate in bad:
        headers = {"Authorization": f"Bearer {candidate}"}
        rest = await api.client.put(f"/profiles/{USER}", json=body, headers=headers)
        assert rest.status_code == 401 and rest.json()["code"] == "UNAUTHENTICATED", rest.text
        assert rest.headers["content-type"].startswith("application/problem+json")
        gql = await api.client.post("/graphql", json={"query": "{ me { userId } }"}, headers=headers)
        assert gql.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
