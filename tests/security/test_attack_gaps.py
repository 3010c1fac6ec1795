"""The attack suite's gaps (issue 10, item 8) and our outage at the edges (item 1): every client mistake gets its
typed error (GraphQL ``extensions.code``, REST problem+json, WebSocket close 4400 or the protocol's ``error``),
never a 500; a database that is busy, locked or away answers UNAVAILABLE with Retry-After, logged as a warning."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg.exceptions
import pytest
from structlog.testing import capture_logs

from app.api.json_nesting import MAX_JSON_DEPTH, nests_deeper_than
from app.db.errors import DatabaseUnavailable
from app.db.tables import Profile
from app.errors import ErrorCode, ServiceError
from app.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import Api
from tests.ws_client import TRANSPORT_WS, WS, GraphQLWebSocket, serve_app

SQLITE = pytest.mark.parametrize("backend", ["sqlite"])
Start = Callable[[Settings], Awaitable[Api]]
PROBLEM = "application/problem+json"

PROFILE = {
    "displayName": "Mallory",
    "prompts": [{"question": "q", "answer": "a"}],
    "consentPreferences": [{"topic": "t", "statement": "s"}],
}
UPSERT = "mutation A($input: ProfileInput!) { upsertMyProfile(input: $input) { userId } }"
# About 60 KB each, far beyond any decoder's recursion limit.
DEEP_ARRAYS = "[" * 30_000 + "]" * 30_000
DEEP_OBJECTS = '{"a":' * 9_000 + "1" + "}" * 9_000


def _error(result: dict[str, Any]) -> dict[str, Any]:
    assert result.get("data") is None, result
    assert result.get("errors"), result
    return result["errors"][0]


async def _post_graphql(api: Api, user: uuid.UUID, body: dict[str, Any] | bytes) -> dict[str, Any]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**api.headers(user), "content-type": "application/json"}
    response = await api.client.post("/graphql", content=content, headers=headers)
    assert response.status_code in (200, 400), response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


# --- operation selection (GraphQL spec 6.1 GetOperation) --------------------------------------------------


@SQLITE
@pytest.mark.asyncio
async def test_a_request_that_selects_no_single_operation_is_a_typed_error(api: Api) -> None:
    user = uuid.uuid4()
    two = f"{UPSERT} query B {{ me {{ userId }} }}"
    cases = [
        ({"query": "query A { me { userId } }", "operationName": "B"}, "no operation named 'B'"),
        ({"query": "query A { me { userId } }", "operationName": ""}, "no operation named ''"),
        ({"query": "fragment F on Query { __typename }"}, "no operation"),
        # Without operationName Strawberry ran the first one: here a mutation that would write a profile.
        ({"query": two, "variables": {"input": PROFILE}}, "2 operations"),
        ({"query": two, "variables": {"input": PROFILE}, "operationName": None}, "2 operations"),
        ({"query": ""}, "No GraphQL query"),
    ]
    for body, message in cases:
        error = _error(await _post_graphql(api, user, body))
        assert error["extensions"] == {"code": "BAD_USER_INPUT"}, (body, error)
        assert message in error["message"], (body, error)
    assert await Profile.count().run() == 0  # nothing ran
    chosen = await _post_graphql(api, user, {"query": two, "variables": {"input": PROFILE}, "operationName": "B"})
    assert chosen == {"data": {"me": None}}
    chosen = await _post_graphql(api, user, {"query": two, "variables": {"input": PROFILE}, "operationName": "A"})
    assert chosen["data"]["upsertMyProfile"]["userId"] == str(user)


STATUS = "subscription {name}($id: ID!) {{ connectionKeyStatus(conversationId: $id) {{ conversationId }} }}"


@SQLITE
@pytest.mark.parametrize("protocol", [TRANSPORT_WS, WS])
@pytest.mark.asyncio
async def test_operation_selection_over_websocket(api: Api, protocol: str) -> None:
    user = uuid.uuid4()
    two = STATUS.format(name="A") + " " + STATUS.format(name="B")
    cases = [
        ({"query": STATUS.format(name="A"), "operationName": "B"}, "no operation named 'B'"),
        ({"query": STATUS.format(name="A"), "operationName": ""}, "no operation named ''"),
        ({"query": "fragment F on Subscription { __typename }"}, "no operation"),
        # Without the check the first subscription ran, and answered NOT_FOUND for this unknown conversation.
        ({"query": two}, "2 operations"),
    ]
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    async with serve_app(api.app) as base, GraphQLWebSocket.open(base + "/graphql", protocol) as client:
        assert (await client.init({"Authorization": f"Bearer {api.token(user)}"}))["type"] == "connection_ack"
        for number, (payload, message) in enumerate(cases):
            variables = {"id": str(uuid.uuid4())}
            await client.send({"id": str(number), "type": kind, "payload": {**payload, "variables": variables}})
            answer = await client.receive()
            assert answer["type"] == "error" and answer["id"] == str(number), answer
            error = answer["payload"][0] if protocol == TRANSPORT_WS else answer["payload"]
            assert error["extensions"] == {"code": "BAD_USER_INPUT"}, (payload, error)
            assert message in error["message"], (payload, error)


# --- deeply nested JSON --------------------------------------------------------------------------------------


def test_nesting_is_measured_on_raw_bytes() -> None:
    assert nests_deeper_than(DEEP_ARRAYS.encode()) and nests_deeper_than(DEEP_OBJECTS.encode())
    assert not nests_deeper_than(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert nests_deeper_than(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert not nests_deeper_than(b"[]" * 50_000)  # many brackets, shallow

    # Deep without a long run of openings: each level also holds an empty array, one level deeper.
    def staircase(levels: int) -> bytes:
        return ("[[]," * levels + "1" + "]" * levels).encode()

    assert json.loads(staircase(MAX_JSON_DEPTH)) and nests_deeper_than(staircase(MAX_JSON_DEPTH))
    assert not nests_deeper_than(staircase(MAX_JSON_DEPTH - 1))
    # Brackets inside strings (escaped quotes included) are text.
    text = json.dumps({"answer": '\\"' + "[{" * 5_000, "other": "]}" * 5_000}).encode()
    assert not nests_deeper_than(text)
    assert nests_deeper_than(json.dumps({"a": json.loads("[" * 40 + "]" * 40), "s": '"['}).encode())


@SQLITE
@pytest.mark.asyncio
async def test_deeply_nested_json_is_refused_over_http(api: Api) -> None:
    user = uuid.uuid4()
    for deep in (DEEP_ARRAYS, DEEP_OBJECTS):
        body = ('{"query": "{ __typename }", "variables": {"a": ' + deep + "}}").encode()
        headers = {**api.headers(user), "content-type": "application/json"}
        response = await api.client.post("/graphql", content=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert _error(response.json())["extensions"] == {"code": "BAD_USER_INPUT", "limit": "depth"}
        for method, path in (("POST", "/connection-keys"), ("PUT", f"/profiles/{user}")):
            body = ('{"targetUserId": "' + str(user) + '", "displayName": ' + deep + "}").encode()
            response = await api.client.request(method, path, content=body, headers=headers)
            assert response.status_code == 400, (path, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
            problem = response.json()
            assert problem["code"] == "BAD_USER_INPUT" and problem["limit"] == "depth", problem
    # Brackets in text are not nesting: a profile whose answer is all brackets is stored.
    brackets = {**PROFILE, "prompts": [{"question": "q", "answer": "[{" * 200}]}
    response = await api.client.put(f"/profiles/{user}", json=brackets, headers=api.headers(user))
    assert response.status_code == 200, response.text
    result = await api.gql(UPSERT, user, input=brackets)
    assert result["data"]["upsertMyProfile"]["userId"] == str(user), result


@SQLITE
@pytest.mark.asyncio
async def test_deeply_nested_json_over_websocket(api: Api) -> None:
    user = uuid.uuid4()
    deep = '{"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }", "variables": {"a": '
    async with serve_app(api.app) as base:
        # graphql-transport-ws: a message the server will not read closes the socket with 4400.
        async with GraphQLWebSocket.open(base + "/graphql", TRANSPORT_WS) as client:
            assert (await client.init({"Authorization": f"Bearer {api.token(user)}"}))["type"] == "connection_ack"
            await client.connection.send(deep + DEEP_ARRAYS + "}}}")
            assert await client.closed() == (4400, "Message nested too deeply")
        # graphql-ws: the protocol's error (no id: the message could not be read); the socket stays usable.
        async with GraphQLWebSocket.open(base + "/graphql", WS) as client:
            assert (await client.init({"Authorization": f"Bearer {api.token(user)}"}))["type"] == "connection_ack"
            await client.connection.send(deep.replace("subscribe", "start") + DEEP_OBJECTS + "}}}")
            answer = await client.receive()
            assert answer["type"] == "error" and "id" not in answer, answer
            assert answer["payload"]["extensions"] == {"code": "BAD_USER_INPUT", "limit": "depth"}
            await client.subscribe("2", STATUS.format(name="S"), id=str(uuid.uuid4()))
            answer = await client.receive()
            assert answer["id"] == "2" and answer["payload"]["extensions"]["code"] == "NOT_FOUND", answer


# --- GET /graphql ---------------------------------------------------------------------------------------------


@SQLITE
@pytest.mark.asyncio
async def test_get_is_a_typed_graphql_error(api: Api) -> None:
    user = uuid.uuid4()
    for url, status in (("/graphql?query=", 400), ("/graphql", 400), ("/graphql?query={__typename}", 405)):
        response = await api.client.get(url, headers={**api.headers(user), "accept": "application/json"})
        assert response.status_code == status, (url, response.text)
        assert response.headers["content-type"].startswith("application/json")
        assert _error(response.json())["extensions"] == {"code": "BAD_USER_INPUT"}, url
    assert response.headers["allow"] == "POST"
    browser = await api.client.get("/graphql", headers={"accept": "text/html"})  # GraphiQL is development only
    assert browser.status_code == 400 and _error(browser.json())["extensions"]["code"] == "BAD_USER_INPUT"


@SQLITE
@pytest.mark.asyncio
async def test_graphiql_is_still_served_in_development(api_factory: Start, database_url: str) -> None:
    api = await api_factory(make_settings(database_url, server={"environment": "development"}))
    page = await api.client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    refused = await api.client.get("/graphql?query={__typename}", headers={"accept": "text/html"})
    assert refused.status_code == 405


# --- the per-socket operation limit -------------------------------------------------------------------------


@SQLITE
@pytest.mark.parametrize("protocol", [TRANSPORT_WS, WS])
@pytest.mark.asyncio
async def test_the_operation_limit_error_is_typed(api_factory: Start, database_url: str, protocol: str) -> None:
    api = await api_factory(make_settings(database_url, server={"ws_max_operations": 1}))
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    conversation = (await api.create_key(alice, bob))["conversationId"]
    async with serve_app(api.app) as base, GraphQLWebSocket.open(base + "/graphql", protocol) as client:
        assert (await client.init({"Authorization": f"Bearer {api.token(alice)}"}))["type"] == "connection_ack"
        await client.subscribe("1", STATUS.format(name="S"), id=conversation)
        first = await client.receive()
        assert first["id"] == "1" and first["type"] in ("next", "data"), first  # the current state: running
        await client.subscribe("2", STATUS.format(name="S"), id=conversation)
        refused = await client.receive()
        assert refused["type"] == "error" and refused["id"] == "2", refused
        error = refused["payload"][0] if protocol == TRANSPORT_WS else refused["payload"]
        assert error["extensions"] == {"code": "BAD_USER_INPUT", "limit": "operations"}, error


# --- our outage at the edges ----------------------------------------------------------------------------------

OUTAGES = [
    pytest.param(lambda: sqlite3.OperationalError("database is locked"), id="sqlite-locked"),
    pytest.param(lambda: asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), id="pg-gone"),
    pytest.param(lambda: TimeoutError(), id="pool-acquire-timeout"),
    pytest.param(lambda: DatabaseUnavailable(), id="database-unavailable"),
    pytest.param(lambda: ServiceError(ErrorCode.UNAVAILABLE, "Quiz generation is busy."), id="service-unavailable"),
]


def _failing(make: Callable[[], BaseException]) -> Callable[..., Awaitable[Any]]:
    async def fail(*_: Any, **__: Any) -> Any:
        raise make()

    return fail


@SQLITE
@pytest.mark.parametrize("outage", OUTAGES)
@pytest.mark.asyncio
async def test_a_database_outage_is_unavailable_with_retry_after(
    api: Api, monkeypatch: pytest.MonkeyPatch, outage: Callable[[], BaseException]
) -> None:
    """Fault injection: the profile store fails the way a busy, locked or lost database does."""
    user = uuid.uuid4()
    wait = api.settings.database.busy_retry_after_seconds
    store = api.services.profile_store
    monkeypatch.setattr(store, "upsert_profile", _failing(outage))
    monkeypatch.setattr(store, "get_profile", _failing(outage))
    with capture_logs() as logs:
        response = await api.client.put(f"/profiles/{user}", json=PROFILE, headers=api.headers(user))
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.headers["retry-after"] == str(wait)
        problem = response.json()
        assert problem["code"] == "UNAVAILABLE" and problem["retryAfter"] == wait, problem

        for query, variables in ((UPSERT, {"input": PROFILE}), ("{ me { userId } }", {})):
            response = await api.client.post(
                "/graphql", json={"query": query, "variables": variables}, headers=api.headers(user)
            )
            assert response.status_code == 200, response.text
            assert response.headers["retry-after"] == str(wait)
            error = response.json()["errors"][0]
            assert error["extensions"] == {"code": "UNAVAILABLE", "retryAfter": wait}, error
    assert not [entry for entry in logs if entry["log_level"] in ("error", "critical")], logs
    outage_logs = [entry for entry in logs if entry["event"] == "database_unavailable"]
    if not isinstance(outage(), ServiceError) or isinstance(outage(), DatabaseUnavailable):
        assert len(outage_logs) == 3 and all(entry["log_level"] == "warning" for entry in outage_logs), logs
        assert all("exc_info" not in entry and "Mallory" not in str(entry) for entry in outage_logs), outage_logs
    assert await Profile.count().run() == 0


@SQLITE
@pytest.mark.parametrize("protocol", [TRANSPORT_WS, WS])
@pytest.mark.asyncio
async def test_a_database_outage_over_websocket(api: Api, monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    user = uuid.uuid4()
    monkeypatch.setattr(
        api.services.profile_store, "get_conversation", _failing(lambda: sqlite3.OperationalError("database is locked"))
    )
    async with serve_app(api.app) as base, GraphQLWebSocket.open(base + "/graphql", protocol) as client:
        assert (await client.init({"Authorization": f"Bearer {api.token(user)}"}))["type"] == "connection_ack"
        await client.subscribe("1", STATUS.format(name="S"), id=str(uuid.uuid4()))
        answer = await client.receive()
        assert answer["type"] == "error" and answer["id"] == "1", answer
        error = answer["payload"][0] if protocol == TRANSPORT_WS else answer["payload"]
        wait = api.settings.database.busy_retry_after_seconds
        assert error["extensions"] == {"code": "UNAVAILABLE", "retryAfter": wait}, error
