"""The GraphQL endpoint: HTTP POST for queries and mutations, WebSocket for subscriptions.

POST is a thin Litestar handler: msgspec decodes the body, the schema executes, msgspec encodes the
result. Strawberry's own view does the same work through per-request dependency resolution, content
negotiation and argument plumbing that cost more than our resolvers (measured in bench/RESULTS.md).
Strawberry's controller still serves GraphiQL (development only) and the WebSocket protocols
(``graphql-transport-ws`` and the legacy ``graphql-ws``, see :mod:`app.api.graphql.websocket`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import msgspec
import strawberry
from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.enums import MediaType
from strawberry.litestar import make_graphql_controller
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UnsetType

from app.api.graphql.context import GraphQLContext, context_getter
from app.api.graphql.schema import build_schema
from app.api.graphql.websocket import (
    GraphQLTransportWSHandler,
    GraphQLWSHandler,
    SubscriptionConnection,
    authenticate_connection,
)
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
_HTTP_OPERATIONS = (OperationType.QUERY, OperationType.MUTATION)


def _bad_request(message: str, status: int = 400, **extensions: Any) -> Response[bytes]:
    error = {"message": message, "extensions": {"code": ErrorCode.BAD_USER_INPUT.value, **extensions}}
    body = {"data": None, "errors": [error]}
    return Response(msgspec.json.encode(body), status_code=status, media_type=MediaType.JSON)


def build_graphql_controller(settings: Settings) -> type:
    """The ``/graphql`` controller: the thin POST handler, subscriptions over WebSocket, GraphiQL in
    development only."""
    schema: strawberry.Schema = build_schema(settings.graphql, production=settings.server.environment == "production")
    base: Any = make_graphql_controller(
        schema,
        path=settings.server.graphql_path,
        graphql_ide="graphiql" if settings.is_development else None,
        context_getter=context_getter,
        allow_queries_via_get=False,
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL),
        connection_init_wait_timeout=timedelta(seconds=settings.server.ws_connection_init_seconds),
        keep_alive=True,
        keep_alive_interval=settings.server.ws_keep_alive_seconds,
        max_subscriptions_per_connection=settings.server.ws_max_operations,
    )

    class Connection(SubscriptionConnection):
        max_message_chars: ClassVar[int] = settings.server.max_body_bytes
        send_timeout_seconds: ClassVar[float] = settings.server.ws_send_timeout_seconds

    class GraphQLController(base):  # type: ignore[misc, valid-type]
        include_in_schema = False  # GraphQL documents itself; OpenAPI describes the REST mirrors only
        websocket_adapter_class = Connection
        graphql_transport_ws_handler_class = GraphQLTransportWSHandler
        graphql_ws_handler_class = GraphQLWSHandler

        async def on_ws_connect(self, context: GraphQLContext) -> UnsetType:
            """Authenticate the socket from the ``connection_init`` payload."""
            return await authenticate_connection(context)

        @post("/", status_code=200, include_in_schema=False)
        async def handle_http_post(self, request: Request[Any, Any, Any], state: State) -> Response[bytes]:
            """Execute one GraphQL operation; transport errors are GraphQL-shaped with a typed code."""
            content_type = request.headers.get("content-type", "")
            if not content_type.lower().startswith("application/json"):
                return _bad_request("Unsupported content type: send application/json", 415)
            body = await request.body()
            if body.lstrip()[:1] == b"[":
                # One request, one operation: a batch would multiply every per-request limit.
                return _bad_request(
                    "Batched operations are not supported: send one operation per request.", limit="batch"
                )
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
            try:
                result = await schema.execute(
                    operation.query,
                    variable_values=operation.variables,
                    context_value=context,
                    operation_name=operation.operation_name,
                    allowed_operation_types=_HTTP_OPERATIONS,
                )
            except InvalidOperationTypeError:
                return _bad_request(
                    "Subscriptions are served over WebSocket at this path (graphql-transport-ws or graphql-ws)."
                )
            payload: dict[str, Any] = {"data": result.data}
            if result.errors:
                payload["errors"] = [error.formatted for error in result.errors]
            if result.extensions:
                payload["extensions"] = result.extensions
            return Response(msgspec.json.encode(payload), media_type=MediaType.JSON)

    return GraphQLController
