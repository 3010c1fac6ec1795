"""GraphQL abuse limits: depth, aliases, tokens, cost, introspection and batches are refused with a typed
error before any resolver runs, over HTTP and WebSocket; GraphiQL and introspection are off in production."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from graphql import FragmentDefinitionNode, OperationDefinitionNode, parse

from app.api.graphql.limits import operation_cost
from app.api.graphql.schema import build_schema
from app.db.tables import Profile
from app.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import Api
from tests.ws_client import TRANSPORT_WS, WS, GraphQLWebSocket, serve_app

SQLITE = pytest.mark.parametrize("backend", ["sqlite"])
Start = Callable[[Settings], Awaitable[Api]]

PROFILE_INPUT = {
    "displayName": "Mallory",
    "prompts": [{"question": "q", "answer": "a"}],
    "consentPreferences": [{"topic": "t", "statement": "s"}],
}
ME = "{ me { userId prompts { question answer } consentPreferences { topic statement } } }"


def _refusal(result: dict[str, Any]) -> dict[str, Any]:
    assert result.get("data") is None, result
    assert result.get("errors"), result
    return result["errors"][0]["extensions"]


async def _start(api_factory: Start, database_url: str, **graphql: Any) -> Api:
    return await api_factory(make_settings(database_url, graphql=graphql))


@SQLITE
@pytest.mark.asyncio
async def test_depth_limit(api_factory: Start, database_url: str) -> None:
    api = await _start(api_factory, database_url, max_depth=1)  # strawberry counts the root field as 0
    user = uuid.uuid4()
    refused = _refusal(await api.gql(ME, user))
    assert refused == {"code": "BAD_USER_INPUT", "limit": "depth"}
    # Fragments do not hide depth.
    fragment = "query { me { ...P } } fragment P on Profile { prompts { question } }"
    assert _refusal(await api.gql(fragment, user))["limit"] == "depth"
    assert "errors" not in await api.gql("{ me { userId } }", user)


@SQLITE
@pytest.mark.asyncio
async def test_default_depth_refuses_a_deeply_nested_document(api_factory: Start, database_url: str) -> None:
    api = await _start(api_factory, database_url)
    nested = "{ me " + "{ prompts " * 20 + "{ question }" + " }" * 20 + " }"
    result = await api.gql(nested, uuid.uuid4())
    assert any(e["extensions"].get("limit") == "depth" for e in result["errors"]), result


@SQLITE
@pytest.mark.asyncio
async def test_alias_batch_is_refused_before_any_resolver_runs(api_factory: Start, database_url: str) -> None:
    api = await _start(api_factory, database_url, max_aliases=3)
    user = uuid.uuid4()
    aliased = " ".join(f"a{i}: upsertMyProfile(input: $input) {{ userId }}" for i in range(4))
    result = await api.gql(f"mutation($input: ProfileInput!) {{ {aliased} }}", user, input=PROFILE_INPUT)
    assert _refusal(result) == {"code": "BAD_USER_INPUT", "limit": "aliases"}
    assert await Profile.count().run() == 0  # no resolver ran
    within = " ".join(f"a{i}: upsertMyProfile(input: $input) {{ userId }}" for i in range(3))
    result = await api.gql(f"mutation($input: ProfileInput!) {{ {within} }}", user, input=PROFILE_INPUT)
    assert "errors" not in result, result


@SQLITE
@pytest.mark.asyncio
async def test_token_limit(api_factory: Start, database_url: str) -> None:
    api = await _start(api_factory, database_url, max_tokens=100)
    huge = "{ me { " + "userId " * 200 + "} }"
    result = await api.gql(huge, uuid.uuid4())
    assert _refusal(result)["code"] == "BAD_USER_INPUT"
    assert "tokens" in result["errors"][0]["message"]


@SQLITE
@pytest.mark.asyncio
async def test_complexity_limit(api_factory: Start, database_url: str) -> None:
    api = await _start(api_factory, database_url, max_complexity=50, list_cost_factor=10)
    user = uuid.uuid4()
    assert _refusal(await api.gql(ME, user)) == {"code": "BAD_USER_INPUT", "limit": "complexity"}
    assert "errors" not in await api.gql("{ me { userId prompts { question } } }", user)


def _cost(document: str, list_factor: int = 10) -> int:
    schema = build_schema()._schema
    parsed = parse(document)
    fragments = {d.name.value: d for d in parsed.definitions if isinstance(d, FragmentDefinitionNode)}
    operation = next(d for d in parsed.definitions if isinstance(d, OperationDefinitionNode))
    return operation_cost(operation, schema, fragments, list_factor)


def test_cost_counts_fields_and_multiplies_lists() -> None:
    assert _cost("{ me { userId } }") == 2
    assert _cost("{ me { prompts { question answer } } }") == 1 + (1 + 2) * 10
    assert _cost("{ me { prompts { question answer } } }", list_factor=1) == 4
    # Fragments (also cyclic ones, which validation rejects anyway) and introspection.
    assert _cost("{ me { ...F } } fragment F on Profile { userId bio }") == 3
    assert _cost("{ me { ...F } } fragment F on Profile { ...F userId }") == 2
    assert _cost("{ __schema { types { name } } }") == 1  # one field: introspection has its own switch
    assert _cost("{ __typename me { __typename } }") == 3  # so that a chain of them is not free


@SQLITE
@pytest.mark.asyncio
async def test_defaults_leave_room_for_real_clients(api_factory: Start, database_url: str) -> None:
    api = await _start(api_factory, database_url)
    user = uuid.uuid4()
    await api.upsert_profile(user, "Alice")
    result = await api.gql(ME, user)
    assert "errors" not in result and result["data"]["me"]["prompts"], result
    assert "errors" not in await api.gql("{ __schema { queryType { name } } }", user)


@SQLITE
@pytest.mark.asyncio
async def test_batched_operations_are_refused(api_factory: Start, database_url: str) -> None:
    api = await _start(api_factory, database_url)
    user = uuid.uuid4()
    batch = [{"query": "{ me { userId } }"}] * 50
    response = await api.client.post("/graphql", json=batch, headers=api.headers(user))
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "limit": "batch"}


def _production(database_url: str, **graphql: Any) -> Settings:
    return make_settings(
        database_url,
        server={"environment": "production"},
        auth={"jwt_secret": "production-secret-" + "x" * 40},
        signing={"active_key_id": "prod-1", "keys": {"prod-1": "production-signing-key-" + "y" * 40}},
        graphql=graphql,
    )


@SQLITE
@pytest.mark.asyncio
async def test_introspection_and_graphiql_are_off_in_production(api_factory: Start, database_url: str) -> None:
    production = await api_factory(_production(database_url))
    user = uuid.uuid4()
    for query in ("{ __schema { types { name } } }", '{ __type(name: "Profile") { name } }'):
        assert _refusal(await production.gql(query, user)) == {"code": "BAD_USER_INPUT", "limit": "introspection"}
    assert "errors" not in await production.gql("{ __typename me { userId } }", user)
    page = await production.client.get("/graphql", headers={"accept": "text/html"})
    assert "graphiql" not in page.text.lower()
    assert page.status_code >= 400

    development = await api_factory(make_settings(database_url, server={"environment": "development"}))
    page = await development.client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()


@SQLITE
@pytest.mark.asyncio
async def test_introspection_can_be_forced_on_in_production(api_factory: Start, database_url: str) -> None:
    api = await api_factory(_production(database_url, introspection=True))
    assert "errors" not in await api.gql("{ __schema { queryType { name } } }", uuid.uuid4())


STATUS = "subscription($id: ID!) { status: connectionKeyStatus(conversationId: $id) { conversationId } }"


@SQLITE
@pytest.mark.parametrize("protocol", [TRANSPORT_WS, WS])
@pytest.mark.asyncio
async def test_limits_apply_over_websocket(api_factory: Start, database_url: str, protocol: str) -> None:
    api = await _start(api_factory, database_url, max_aliases=0)
    user = uuid.uuid4()
    async with serve_app(api.app) as base, GraphQLWebSocket.open(base + "/graphql", protocol) as client:
        ack = await client.init({"Authorization": f"Bearer {api.token(user)}"})
        assert ack["type"] == "connection_ack"
        await client.subscribe("1", STATUS, id=str(uuid.uuid4()))
        message = await client.receive()
        errors = message["payload"] if protocol == TRANSPORT_WS else [message["payload"]]
        assert message["type"] == "error", message
        assert errors[0]["extensions"] == {"code": "BAD_USER_INPUT", "limit": "aliases"}
    assert not api.services.pubsub._subscribers  # type: ignore[attr-defined]  # the resolver never ran


def _fragment_chain(levels: int) -> str:
    """``{ ...F0 }`` where every fragment spreads the next one twice: 2**levels ``__typename`` selections
    once expanded, in a document of a few hundred bytes."""
    fragments = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels))
    return f"query {{ ...F0 }} {fragments} fragment F{levels} on Query {{ __typename }}"


@SQLITE
@pytest.mark.asyncio
async def test_nested_fragment_chains_are_measured_once_per_fragment_and_refused(
    api_factory: Start, database_url: str
) -> None:
    """Each fragment's cost and depth are computed once: re-walking them at every spread (strawberry's depth
    limiter did, and the cost rule did) made validating 30 levels take about 2**30 steps, on the event loop,
    before any login check; and ``__typename`` costing nothing let the chain through."""
    api = await _start(api_factory, database_url)
    document = _fragment_chain(30)
    assert len(document) < 2000
    refused = _refusal(await api.gql(document))
    assert refused == {"code": "BAD_USER_INPUT", "limit": "complexity"}
    schema = build_schema()._schema
    tree = parse(document)
    fragments = {d.name.value: d for d in tree.definitions if isinstance(d, FragmentDefinitionNode)}
    operation = next(d for d in tree.definitions if isinstance(d, OperationDefinitionNode))
    assert operation_cost(operation, schema, fragments, 10) == 2**30


@SQLITE
@pytest.mark.asyncio
async def test_an_unknown_fragment_is_a_typed_error(api_factory: Start, database_url: str) -> None:
    result = await (await _start(api_factory, database_url)).gql("query { ...Nope }")
    assert result.get("data") is None
    assert [e["extensions"]["code"] for e in result["errors"]] == ["BAD_USER_INPUT"]
