"""JWT verification: claims, algorithm allow-list, JWKS (file and URL) and confusion attacks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from app import auth
from app.auth import JwtVerifier, Principal, mint_token
from app.errors import ErrorCode, ServiceError
from app.settings import AuthSettings

SECRET = "unit-test-supabase-jwt-secret-" + "0123456789abcdef" * 3  # >= 48 bytes, so HS384 is quiet too
USER = uuid.UUID("6f1c1f7e-3c1a-4d5e-9b2a-1c2d3e4f5a6b")


def make_settings(**overrides: Any) -> AuthSettings:
    return msgspec.structs.replace(AuthSettings(), jwt_secret=SECRET, **overrides)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": str(USER),
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


async def rejected(verifier: JwtVerifier, token: str) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        await verifier.verify(token)
    error = info.value
    assert error.code is ErrorCode.UNAUTHENTICATED
    if token:
        assert token not in error.message and token not in repr(error)
    return error


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def jwk(key: Any, kid: str | None) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPublicKey) else ECAlgorithm
    data = algorithm.to_jwk(key, as_dict=True)
    if kid is not None:
        data["kid"] = kid
    return data


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> str:
    path = tmp_path / "jwks.json"
    doc = {"keys": [jwk(rsa_key.public_key(), "rsa-1"), jwk(ec_key.public_key(), "ec-1")]}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


# --- HS256 and claims -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_valid_hs256_principal() -> None:
    token = mint_token(SECRET, USER, ttl_seconds=600)
    principal = await JwtVerifier(make_settings()).verify(token)
    assert isinstance(principal, Principal)
    assert principal.user_id == USER
    assert principal.role == "authenticated"
    assert principal.is_service_role is False
    assert principal.scopes == frozenset()
    assert principal.expires_at.tzinfo is not None and principal.expires_at.utcoffset().total_seconds() == 0
    assert abs(principal.expires_at.timestamp() - (time.time() + 600)) < 5


@pytest.mark.asyncio
async def test_role_defaults_to_authenticated_when_absent() -> None:
    principal = await JwtVerifier(make_settings()).verify(hs256(claims(role=None)))
    assert principal.role == "authenticated" and not principal.is_service_role


@pytest.mark.asyncio
async def test_service_role_token() -> None:
    token = mint_token(SECRET, USER, role="service_role")
    principal = await JwtVerifier(make_settings()).verify(token)
    assert principal.role == "service_role" and principal.is_service_role
    custom = JwtVerifier(make_settings(service_role="backend"))
    assert (await custom.verify(token)).is_service_role is False


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"scope": "quiz:read  quiz:write"}, {"quiz:read", "quiz:write"}),
        ({"scopes": ["a", "b", 3, ""]}, {"a", "b"}),
        ({"app_metadata": {"roles": ["admin", None, "moderator"], "provider": "email"}}, {"admin", "moderator"}),
        ({"scope": "read", "app_metadata": {"roles": ["admin"]}}, {"read", "admin"}),
        ({"app_metadata": {"roles": "admin"}}, set()),
        ({"app_metadata": "junk"}, set()),
    ],
)
@pytest.mark.asyncio
async def test_scopes_and_app_metadata_roles(extra: dict[str, Any], expected: set[str]) -> None:
    token = mint_token(SECRET, USER, extra_claims=extra)
    assert (await JwtVerifier(make_settings()).verify(token)).scopes == frozenset(expected)


@pytest.mark.asyncio
async def test_expired_token() -> None:
    now = int(time.time())
    error = await rejected(JwtVerifier(make_settings()), hs256(claims(iat=now - 7200, exp=now - 3600)))
    assert error.extra["reason"] == "expired"


@pytest.mark.asyncio
async def test_nbf_in_future() -> None:
    error = await rejected(JwtVerifier(make_settings()), hs256(claims(nbf=int(time.time()) + 600)))
    assert error.extra["reason"] == "not_yet_valid"


@pytest.mark.asyncio
async def test_iat_in_future() -> None:
    error = await rejected(JwtVerifier(make_settings()), hs256(claims(iat=int(time.time()) + 600)))
    assert error.extra["reason"] == "not_yet_valid"


@pytest.mark.asyncio
async def test_leeway_honoured() -> None:
    now = int(time.time())
    just_expired = hs256(claims(iat=now - 100, exp=now - 10))
    almost_valid = hs256(claims(nbf=now + 10))
    lenient, strict = JwtVerifier(make_settings(leeway_seconds=30)), JwtVerifier(make_settings(leeway_seconds=0))
    assert (await lenient.verify(just_expired)).user_id == USER
    assert (await lenient.verify(almost_valid)).user_id == USER
    assert (await rejected(strict, just_expired)).extra["reason"] == "expired"
    assert (await rejected(strict, almost_valid)).extra["reason"] == "not_yet_valid"


@pytest.mark.asyncio
async def test_wrong_audience() -> None:
    verifier = JwtVerifier(make_settings())
    assert (await rejected(verifier, hs256(claims(aud="anon")))).extra["reason"] == "bad_audience"
    assert (await rejected(verifier, hs256(claims(aud=None)))).extra["reason"] == "missing_claim"
    custom = JwtVerifier(make_settings(audience="ck"))
    assert (await custom.verify(mint_token(SECRET, USER, audience="ck"))).user_id == USER


@pytest.mark.asyncio
async def test_issuer_enforced_when_configured() -> None:
    iss = "https://project.supabase.co/auth/v1"
    verifier = JwtVerifier(make_settings(issuer=iss))
    assert (await verifier.verify(mint_token(SECRET, USER, issuer=iss))).user_id == USER
    assert (await rejected(verifier, mint_token(SECRET, USER, issuer="https://evil"))).extra["reason"] == "bad_issuer"
    assert (await rejected(verifier, mint_token(SECRET, USER))).extra["reason"] == "missing_claim"


@pytest.mark.asyncio
async def test_issuer_ignored_when_not_configured() -> None:
    verifier = JwtVerifier(make_settings(issuer=None))
    assert (await verifier.verify(mint_token(SECRET, USER, issuer="https://anything"))).user_id == USER
    assert (await verifier.verify(mint_token(SECRET, USER))).user_id == USER


@pytest.mark.asyncio
async def test_bad_signature() -> None:
    header, payload, signature = mint_token(SECRET, USER).split(".")
    tampered_payload = b64url(json.dumps(claims(role="service_role")).encode())
    verifier = JwtVerifier(make_settings())
    assert (await rejected(verifier, f"{header}.{tampered_payload}.{signature}")).extra["reason"] == "bad_signature"
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert (await rejected(verifier, f"{header}.{payload}.{flipped}")).extra["reason"] == "bad_signature"


@pytest.mark.asyncio
async def test_wrong_secret() -> None:
    token = mint_token("another-secret-that-is-long-enough-0123456789abcdef", USER)
    assert (await rejected(JwtVerifier(make_settings()), token)).extra["reason"] == "bad_signature"


@pytest.mark.asyncio
async def test_alg_none_rejected() -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    error = await rejected(JwtVerifier(make_settings()), f"{header}.{payload}.")
    assert error.extra["reason"] == "alg_not_allowed"


@pytest.mark.asyncio
async def test_alg_none_rejected_even_if_configured() -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    verifier = JwtVerifier(make_settings(algorithms=["none", "HS256"]))
    assert (await rejected(verifier, f"{header}.{payload}.")).extra["reason"] == "alg_not_allowed"


@pytest.mark.asyncio
async def test_hs384_rejected() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS384")
    assert (await rejected(JwtVerifier(make_settings()), token)).extra["reason"] == "alg_not_allowed"


@pytest.mark.asyncio
async def test_hs256_rejected_when_not_in_allow_list() -> None:
    verifier = JwtVerifier(make_settings(algorithms=["RS256"]))
    assert (await rejected(verifier, mint_token(SECRET, USER))).extra["reason"] == "alg_not_allowed"


@pytest.mark.parametrize("sub", ["not-a-uuid", "", "12345"])
@pytest.mark.asyncio
async def test_non_uuid_sub(sub: str) -> None:
    error = await rejected(JwtVerifier(make_settings()), hs256(claims(sub=sub)))
    assert error.extra["reason"] in {"bad_subject", "missing_claim"}


@pytest.mark.asyncio
async def test_non_string_sub() -> None:
    assert (await rejected(JwtVerifier(make_settings()), hs256(claims(sub=42)))).extra["reason"] == "malformed"


@pytest.mark.asyncio
async def test_missing_exp_and_sub() -> None:
    verifier = JwtVerifier(make_settings())
    assert (await rejected(verifier, hs256(claims(exp=None)))).extra["reason"] == "missing_claim"
    assert (await rejected(verifier, hs256(claims(sub=None)))).extra["reason"] == "missing_claim"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "....", "x" * 20_000, "eyJhbGciOiJIUzI1NiJ9.e30."])
@pytest.mark.asyncio
async def test_malformed_strings(token: str) -> None:
    error = await rejected(JwtVerifier(make_settings()), token)
    assert error.extra["reason"] in {"malformed", "bad_signature", "missing_claim"}


@pytest.mark.asyncio
async def test_malformed_reasons_are_malformed() -> None:
    verifier = JwtVerifier(make_settings())
    for token in ("", "abc", "a.b.c"):
        assert (await rejected(verifier, token)).extra["reason"] == "malformed"


# --- Authorization header ---------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
@pytest.mark.asyncio
async def test_authorization_header_missing(header: str | None) -> None:
    with pytest.raises(ServiceError) as info:
        await JwtVerifier(make_settings()).verify_authorization_header(header)
    assert info.value.code is ErrorCode.UNAUTHENTICATED
    assert info.value.message == "Authentication required"


@pytest.mark.parametrize("header", ["Basic x", "Bearer", "Bearer   ", "Token abc", "Bearerabc"])
@pytest.mark.asyncio
async def test_authorization_header_wrong_scheme(header: str) -> None:
    with pytest.raises(ServiceError) as info:
        await JwtVerifier(make_settings()).verify_authorization_header(header)
    assert info.value.code is ErrorCode.UNAUTHENTICATED


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
@pytest.mark.asyncio
async def test_authorization_header_bearer_any_case(scheme: str) -> None:
    token = mint_token(SECRET, USER)
    principal = await JwtVerifier(make_settings()).verify_authorization_header(f"{scheme} {token}")
    assert principal.user_id == USER


@pytest.mark.asyncio
async def test_authorization_header_bad_token() -> None:
    with pytest.raises(ServiceError) as info:
        await JwtVerifier(make_settings()).verify_authorization_header("Bearer a.b.c")
    assert info.value.code is ErrorCode.UNAUTHENTICATED and info.value.extra["reason"] == "malformed"


# --- ES256 / RS256 via JWKS file --------------------------------------------------------------


@pytest.mark.asyncio
async def test_es256_and_rs256_from_jwks_file(
    jwks_file: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = JwtVerifier(make_settings(jwks_file=jwks_file))
    rs = jwt.encode(claims(role="service_role"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert (await verifier.verify(rs)).is_service_role
    assert (await verifier.verify(es)).user_id == USER
    await verifier.aclose()


@pytest.mark.asyncio
async def test_no_kid_uses_single_key_of_matching_family(
    jwks_file: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = JwtVerifier(make_settings(jwks_file=jwks_file))
    assert (await verifier.verify(jwt.encode(claims(), rsa_key, algorithm="RS256"))).user_id == USER
    assert (await verifier.verify(jwt.encode(claims(), ec_key, algorithm="ES256"))).user_id == USER


@pytest.mark.asyncio
async def test_no_kid_with_two_candidate_keys_is_rejected(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(rsa_key.public_key(), "a"), jwk(other.public_key(), "b")]}))
    verifier = JwtVerifier(make_settings(jwks_file=str(path)))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await rejected(verifier, token)).extra["reason"] == "unknown_kid"


@pytest.mark.asyncio
async def test_unknown_kid(jwks_file: str, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rotated-away"})
    assert (await rejected(JwtVerifier(make_settings(jwks_file=jwks_file)), token)).extra["reason"] == "unknown_kid"


@pytest.mark.asyncio
async def test_asymmetric_token_without_any_jwks_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await rejected(JwtVerifier(make_settings()), token)).extra["reason"] == "unknown_kid"


@pytest.mark.asyncio
async def test_rs256_signed_by_other_key_fails(jwks_file: str) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), attacker, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await rejected(JwtVerifier(make_settings(jwks_file=jwks_file)), token)).extra["reason"] == "bad_signature"


@pytest.mark.asyncio
async def test_kid_of_other_key_family_is_rejected(jwks_file: str, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
    assert (await rejected(JwtVerifier(make_settings(jwks_file=jwks_file)), token)).extra["reason"] == "key_mismatch"


@pytest.mark.asyncio
async def test_algorithm_confusion_hs256_with_rsa_public_key_as_secret(
    jwks_file: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = b64url(json.dumps(claims(role="service_role")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = b64url(hmac.new(pem, signing_input, hashlib.sha256).digest())
    verifier = JwtVerifier(make_settings(jwks_file=jwks_file))
    assert (await rejected(verifier, f"{header}.{payload}.{signature}")).extra["reason"] == "bad_signature"
    # Even with HS256 dropped from the allow-list the forged token must not be accepted.
    rs_only = JwtVerifier(make_settings(jwks_file=jwks_file, algorithms=["RS256", "ES256"]))
    assert (await rejected(rs_only, f"{header}.{payload}.{signature}")).extra["reason"] == "alg_not_allowed"


@pytest.mark.asyncio
async def test_oct_keys_in_jwks_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": b64url(b"k" * 64), "alg": "HS256"}]}))
    token = hs256(claims(), secret="k" * 64, kid="h")
    assert (await rejected(JwtVerifier(make_settings(jwks_file=str(path))), token)).extra["reason"] == "bad_signature"


@pytest.mark.asyncio
async def test_unreadable_jwks_file_rejects_without_crashing(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{not json")
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    verifier = JwtVerifier(make_settings(jwks_file=str(path)))
    assert (await rejected(verifier, token)).extra["reason"] == "unknown_kid"
    # A fixed file is picked up on the next call: failures are not cached.
    path.write_text(json.dumps({"keys": [jwk(rsa_key.public_key(), "rsa-1")]}))
    assert (await verifier.verify(token)).user_id == USER


# --- JWKS URL ---------------------------------------------------------------------------------


class JwksServer:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = json.dumps(server.doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def jwks_server(rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch) -> Iterator[JwksServer]:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = JwksServer({"keys": [jwk(rsa_key.public_key(), "rsa-1")]})
    yield server
    server.close()


@pytest.mark.asyncio
async def test_jwks_url_fetch_and_cache(jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(make_settings(jwks_url=jwks_server.url))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await verifier.verify(token)).user_id == USER
    assert jwks_server.requests == 1
    assert (await verifier.verify(token)).user_id == USER
    assert jwks_server.requests == 1
    await verifier.aclose()


@pytest.mark.asyncio
async def test_jwks_url_concurrent_verifies_share_one_fetch(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = JwtVerifier(make_settings(jwks_url=jwks_server.url))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    principals = await asyncio.gather(*(verifier.verify(token) for _ in range(10)))
    assert {p.user_id for p in principals} == {USER}
    assert jwks_server.requests == 1


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "kid": 5},
        {"alg": "RS256", "kid": 5},
        {"alg": ["HS256"]},
        {"alg": "HS256", "crit": ["x"], "x": 1},
    ],
)
@pytest.mark.asyncio
async def test_odd_headers_are_rejected(header: dict[str, Any]) -> None:
    token = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims()).encode())}.AAAA"
    reasons = {"malformed", "alg_not_allowed", "crit_not_supported"}
    assert (await rejected(JwtVerifier(make_settings()), token)).extra["reason"] in reasons


@pytest.mark.asyncio
async def test_jwks_url_fetch_runs_off_the_event_loop_thread(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    real_fetch = auth._fetch

    def spying_fetch(url: str) -> bytes:
        threads.append(threading.get_ident())
        return real_fetch(url)

    monkeypatch.setattr(auth, "_fetch", spying_fetch)
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await JwtVerifier(make_settings(jwks_url=jwks_server.url)).verify(token)).user_id == USER
    assert threads and threading.get_ident() not in threads


@pytest.mark.asyncio
async def test_jwks_url_cache_expiry_and_rotation(jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JwtVerifier(make_settings(jwks_url=jwks_server.url, jwks_cache_seconds=600))
    now = [1000.0]
    verifier._clock = lambda: now[0]
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await verifier.verify(token)).user_id == USER
    assert jwks_server.requests == 1

    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.doc = {"keys": [jwk(rsa_key.public_key(), "rsa-1"), jwk(rotated.public_key(), "rsa-2")]}
    new_token = jwt.encode(claims(), rotated, algorithm="RS256", headers={"kid": "rsa-2"})
    # Within 30 s of the last fetch an unknown kid does not trigger another request.
    now[0] += 10
    assert (await rejected(verifier, new_token)).extra["reason"] == "unknown_kid"
    assert jwks_server.requests == 1
    # After 30 s one refetch picks up the rotated key; later unknown kids stay rate-limited.
    now[0] += 25
    assert (await verifier.verify(new_token)).user_id == USER
    assert jwks_server.requests == 2
    stranger = jwt.encode(claims(), rotated, algorithm="RS256", headers={"kid": "rsa-3"})
    assert (await rejected(verifier, stranger)).extra["reason"] == "unknown_kid"
    assert jwks_server.requests == 2
    # Once the cache period has passed, known kids also cause one refresh.
    now[0] += 601
    assert (await verifier.verify(token)).user_id == USER
    assert jwks_server.requests == 3


@pytest.mark.asyncio
async def test_jwks_url_unreachable_is_unauthenticated(rsa_key: rsa.RSAPrivateKey) -> None:
    server = JwksServer({"keys": []})
    url = server.url
    server.close()  # nothing listens on the port any more
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert (await rejected(JwtVerifier(make_settings(jwks_url=url)), token)).extra["reason"] == "unknown_kid"


@pytest.mark.asyncio
async def test_jwks_url_must_be_http(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(rsa_key.public_key(), "rsa-1")]}))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    verifier = JwtVerifier(make_settings(jwks_url=path.as_uri()))
    assert (await rejected(verifier, token)).extra["reason"] == "unknown_kid"


# --- mint_token -------------------------------------------------------------------------------


def test_mint_token_shape() -> None:
    token = mint_token(SECRET, USER, issuer="iss", extra_claims={"session_id": "s"})
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience="authenticated")
    assert payload["sub"] == str(USER) and payload["role"] == "authenticated" and payload["iss"] == "iss"
    assert payload["exp"] - payload["iat"] == 3600 and payload["session_id"] == "s"
    assert "email" not in payload


def test_module_does_not_import_web_frameworks() -> None:
    source = Path(auth.__file__).read_text(encoding="utf-8")
    for name in ("litestar", "strawberry", "piccolo"):
        assert f"import {name}" not in source and f"from {name}" not in source


@pytest.mark.asyncio
async def test_verified_tokens_are_remembered_briefly_and_never_past_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = JwtVerifier(AuthSettings(leeway_seconds=0))
    token = mint_token(AuthSettings().jwt_secret, USER, ttl_seconds=2)
    first = await verifier.verify(token)
    calls = []
    original = verifier._verify_uncached

    async def counting(t: str):
        calls.append(t)
        return await original(t)

    monkeypatch.setattr(verifier, "_verify_uncached", counting)
    assert await verifier.verify(token) == first and calls == []  # remembered
    now = time.monotonic()
    monkeypatch.setattr(verifier, "_clock", lambda: now + 61)
    assert await verifier.verify(token) == first and len(calls) == 1  # re-verified after the cache window
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 5)
    await verifier.verify(token)  # past exp by the cache's clock: it re-verifies instead of answering
    assert len(calls) == 2
