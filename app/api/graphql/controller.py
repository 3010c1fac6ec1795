"""The GraphQL HTTP endpoint.

POST is a thin Litestar handler: msgspec decodes the body, the schema executes, msgspec encodes the
result. Strawberry's own view does the same work through per-request dependency resolution, content
negotiation and argument plumbing that cost more than our resolvers (measured in bench/RESULTS.md).
Strawberry's controller still serves GraphiQL (development only) and, later, subscriptions.
"""

from __future__ import annotations

from typing import Any

import msgspec
import strawberry
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.enums import MediaType
from strawberry.litestar import make_graphql_controller

from app.api.graphql.context import GraphQLContext, context_getter
from app.api.graphql.schema import build_schema
from app.errors import ErrorCode
from app.settings import Settings

__all__ = ["GraphQLRequest", "build_graphql_controller"]


class GraphQLRequest(msgspec.Struct, frozen=True, rename="camel"):
    """The GraphQL-over-HTTP request body."""

    query: str
    variables: dict[str, Any] | None = None
    operation_name: str | None = None
    extensions: dict[str, Any] | None = None


_decoder = msgspec.json.Decoder(GraphQLRequest)


def _bad_request(message: str, status: int = 400) -> Response[bytes]:
    body = {"data": None, "errors": [{"message": message, "extensions": {"code": ErrorCode.BAD_USER_INPUT.value}}]}
    return Response(msgspec.json.encode(body), status_code=status, media_type=MediaType.JSON)


def build_graphql_controller(settings: Settings) -> type:
    """The ``/graphql`` controller: the thin POST handler, GraphiQL in development only."""
    schema: strawberry.Schema = build_schema()
    base: Any = make_graphql_controller(
        schema,
        path=settings.server.graphql_path,
        graphql_ide="graphiql" if settings.is_development else None,
        context_getter=context_getter,
        allow_queries_via_get=False,
    )

    class GraphQLController(base):  # type: ignore[misc, valid-type]
        @post("/", status_code=200, include_in_schema=False)
        async def handle_http_post(self, request: Request[Any, Any, Any], state: State) -> Response[bytes]:
            """Execute one GraphQL operation; transport errors are GraphQL-shaped with a typed code."""
            content_type = request.headers.get("content-type", "")
            if not content_type.lower().startswith("application/json"):
                return _bad_request("Unsupported content type: send application/json", 415)
            body = await request.body()
            try:
                operation = _decoder.decode(body)
            except msgspec.ValidationError as exc:
                return _bad_request(f"Invalid GraphQL request: {exc}")
            except msgspec.DecodeError:
                return _bad_request("Unable to parse request body as JSON")
            services = state.get("services")
            if services is None:
                return _bad_request("The service is starting.", 503)
            context = GraphQLContext(
                services=services, authorization=request.headers.get("authorization"), request=request
            )
            result = await schema.execute(
                operation.query,
                variable_values=operation.variables,
                context_value=context,
                operation_name=operation.operation_name,
            )
            payload: dict[str, Any] = {"data": result.data}
            if result.errors:
                payload["errors"] = [error.formatted for error in result.errors]
            if result.extensions:
                payload["extensions"] = result.extensions
            return Response(msgspec.json.encode(payload), media_type=MediaType.JSON)

    return GraphQLController
