"""Security headers on every HTTP response (REST, GraphQL, errors, unknown routes), HSTS in production,
the docs pages' relaxed CSP in development only; over-size bodies refused with a typed 413, over HTTP
(declared or chunked) and over WebSocket (close 1009)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.api.security_headers import API_CSP, DOCS_CSP
from app.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import Api
from tests.ws_client import TRANSPORT_WS, GraphQLWebSocket, serve_app

SQLITE = pytest.mark.parametrize("backend", ["sqlite"])
Start = Callable[[Settings], Awaitable[Api]]
PROBLEM = "application/problem+json"

BASELINE = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cache-control": "no-store",
}


def _production(database_url: str) -> Settings:
    return make_settings(
        database_url,
        server={"environment": "production"},
        auth={"jwt_secret": "production-secret-" + "x" * 40},
        signing={"active_key_id": "prod-1", "keys": {"prod-1": "production-signing-key-" + "y" * 40}},
    )


async def _responses(api: Api) -> dict[str, httpx.Response]:
    user = uuid.uuid4()
    profile = {"displayName": "Ann", "prompts": [], "consentPreferences": []}
    huge = b'{"targetUserId": "' + b"a" * (api.settings.server.max_body_bytes + 10) + b'"}'
    json_headers = {**api.headers(user), "content-type": "application/json"}
    return {
        "health": await api.client.get("/health"),
        "rest ok": await api.client.put(f"/profiles/{user}", json=profile, headers=api.headers(user)),
        "rest 401": await api.client.put(f"/profiles/{user}", json=profile),
        "rest 403": await api.client.put(f"/profiles/{uuid.uuid4()}", json=profile, headers=api.headers(user)),
        "rest 400": await api.client.post("/connection-keys", content=b"{nope", headers=json_headers),
        "rest 413": await api.client.post("/connection-keys", content=huge, headers=json_headers),
        "unknown route": await api.client.get("/no-such-route"),
        "wrong method": await api.client.delete("/health"),
        "graphql": await api.client.post("/graphql", json={"query": "{ me { userId } }"}, headers=api.headers(user)),
        "graphql error": await api.client.post("/graphql", json={"query": "{ nope }"}),
        "openapi": await api.client.get("/schema/openapi.json"),
    }


@SQLITE
@pytest.mark.asyncio
async def test_every_response_carries_the_security_headers(api: Api) -> None:
    for name, response in (await _responses(api)).items():
        for header, value in BASELINE.items():
            assert response.headers.get(header) == value, (name, header, response.headers)
        assert response.headers["content-security-policy"] == API_CSP, name
        assert "strict-transport-security" not in response.headers, name  # not outside production


@SQLITE
@pytest.mark.asyncio
async def test_production_adds_hsts_and_keeps_the_strict_policy_on_html(api_factory: Start, database_url: str) -> None:
    api = await api_factory(_production(database_url))
    for name, response in (await _responses(api)).items():
        assert response.headers["strict-transport-security"].startswith("max-age="), name
        assert int(response.headers["strict-transport-security"].split("=")[1].split(";")[0]) >= 31_536_000
        assert response.headers["content-security-policy"] == API_CSP, name
    docs = await api.client.get("/schema/swagger")
    assert docs.headers["content-security-policy"] == API_CSP


@SQLITE
@pytest.mark.asyncio
async def test_docs_pages_get_the_relaxed_policy_in_development_only(api_factory: Start, database_url: str) -> None:
    api = await api_factory(make_settings(database_url, server={"environment": "development"}))
    graphiql = await api.client.get("/graphql", headers={"accept": "text/html"})
    assert graphiql.status_code == 200
    assert graphiql.headers["content-security-policy"] == DOCS_CSP
    assert "frame-ancestors 'none'" in DOCS_CSP
    swagger = await api.client.get("/schema/swagger")
    assert swagger.headers["content-security-policy"] == DOCS_CSP
    api_json = await api.client.get("/health")
    assert api_json.headers["content-security-policy"] == API_CSP


@SQLITE
@pytest.mark.asyncio
async def test_over_size_bodies_get_a_typed_413(api: Api) -> None:
    limit = api.settings.server.max_body_bytes
    user = uuid.uuid4()
    headers = {**api.headers(user), "content-type": "application/json"}
    huge = b'{"query": "{ me { userId } }", "variables": {"x": "' + b"a" * limit + b'"}}'

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit must hold while streaming
        for _ in range(limit // 4096 + 2):
            yield b" " * 4096

    for path, body in (("/connection-keys", huge), ("/graphql", huge), (f"/profiles/{user}", huge)):
        method = "PUT" if path.startswith("/profiles") else "POST"
        for content in (body, chunked()):
            response = await api.client.request(method, path, content=content, headers=headers)
            assert response.status_code == 413, (path, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
            assert response.json()["code"] == "BAD_USER_INPUT"
    # Just under the limit is still parsed (and refused for what it says, not for its size).
    fits = b'{"query": "{ me { userId } }", "variables": {"x": "' + b"a" * (limit - 200) + b'"}}'
    response = await api.client.post("/graphql", content=fits, headers=headers)
    assert response.status_code == 200 and response.json()["data"] == {"me": None}


@SQLITE
@pytest.mark.asyncio
async def test_an_over_size_websocket_message_closes_the_socket(api: Api) -> None:
    user = uuid.uuid4()
    async with serve_app(api.app) as base, GraphQLWebSocket.open(base + "/graphql", TRANSPORT_WS) as client:
        assert (await client.init({"Authorization": f"Bearer {api.token(user)}"}))["type"] == "connection_ack"
        padding: dict[str, Any] = {"pad": "x" * api.settings.server.max_body_bytes}
        await client.send(
            {"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }", "variables": padding}}
        )
        assert await client.closed() == (1009, "Message too big")


def test_python_m_app_caps_uvicorn_websocket_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from app.__main__ import limit_websocket_messages

    monkeypatch.delenv("UVICORN_WS_MAX_SIZE", raising=False)
    monkeypatch.setattr(uvicorn, "run", uvicorn.run)  # restored after the test
    limit_websocket_messages(65536)
    assert uvicorn.run.keywords == {"ws_max_size": 65536}  # type: ignore[attr-defined]  # in-process uvicorn
    import os

    assert os.environ["UVICORN_WS_MAX_SIZE"] == "65536"  # the `uvicorn` subprocess of --reload/--wc
    limit_websocket_messages(65536)  # idempotent: not wrapped twice
    assert not isinstance(uvicorn.run.func, type(uvicorn.run))  # type: ignore[attr-defined]
