"""The GraphQL endpoint: HTTP POST for queries and mutations, WebSocket for subscriptions.

POST is a thin Litestar handler: msgspec decodes the body, the schema executes, msgspec encodes the
result. Strawberry's own view does the same work through per-request dependency resolution, content
negotiation and argument plumbing that cost more than our resolvers (measured in bench/RESULTS.md).
Strawberry's controller still serves GraphiQL (development only) and the WebSocket protocols
(``graphql-transport-ws`` and the legacy ``graphql-ws``, see :mod:`app.api.graphql.websocket`).

Every refusal has the GraphQL shape with ``extensions.code``: a body nested too deeply to decode safely, a
request that selects no single operation (GraphQL spec 6.1), a query over GET. Our outage answers
``UNAVAILABLE`` with ``extensions.retryAfter`` and a ``Retry-After`` header.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import msgspec
import strawberry
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.enums import MediaType
from strawberry.exceptions import MissingQueryError
from strawberry.litestar import make_graphql_controller
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UnsetType

from app.api.docs_pages import graphiql_html
from app.api.graphql.context import GraphQLContext, context_getter
from app.api.graphql.errors import typed
from app.api.graphql.operation_selection import operation_selection_message
from app.api.graphql.schema import build_schema
from app.api.graphql.websocket import (
    GraphQLTransportWSHandler,
    GraphQLWSHandler,
    SubscriptionConnection,
    authenticate_connection,
)
from app.api.json_nesting import MAX_JSON_DEPTH, nests_deeper_than
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


def _refusal(
    code: ErrorCode, message: str, status: int, headers: dict[str, str] | None = None, **extensions: Any
) -> Response[bytes]:
    error = {"message": message, "extensions": {"code": code.value, **extensions}}
    body = {"data": None, "errors": [error]}
    return Response(msgspec.json.encode(body), status_code=status, media_type=MediaType.JSON, headers=headers)


def _bad_request(
    message: str, status: int = 400, headers: dict[str, str] | None = None, **extensions: Any
) -> Response[bytes]:
    return _refusal(ErrorCode.BAD_USER_INPUT, message, status, headers, **extensions)


def _retry_after(errors: list[dict[str, Any]]) -> dict[str, str] | None:
    """A ``Retry-After`` header when an error is our outage, for proxies and clients that read headers."""
    waits = [
        e["extensions"].get("retryAfter", 1)
        for e in errors
        if (e.get("extensions") or {}).get("code") == ErrorCode.UNAVAILABLE.value
    ]
    return {"Retry-After": str(max(waits))} if waits else None


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

        async def render_graphql_ide(self, request: Request[Any, Any, Any]) -> Response[bytes]:
            """GraphiQL with its scripts and styles served by this service, not a CDN (app.api.docs_pages)."""
            return Response(graphiql_html(request), media_type=MediaType.HTML)

        async def on_ws_connect(self, context: GraphQLContext) -> UnsetType:
            """Authenticate the socket from the ``connection_init`` payload."""
            return await authenticate_connection(context)

        @get("/", include_in_schema=False)
        async def handle_http_get(self, request: Request[Any, Any, Any]) -> Response[Any]:
            """GraphiQL for a browser in development; anything else is a typed refusal: operations are
            POSTed (GET would put variables, answers included, in URLs and access logs)."""
            if self.graphql_ide and self.should_render_graphql_ide(request):
                return await self.render_graphql_ide(request)
            if not request.query_params.get("query"):
                return _bad_request("No GraphQL query found: POST it as application/json.")
            return _bad_request(
                "Operations over GET are not supported: POST them as application/json.", 405, {"Allow": "POST"}
            )

        @post("/", status_code=200, include_in_schema=False)
        async def handle_http_post(self, request: Request[Any, Any, Any], state: State) -> Response[bytes]:
            """Execute one GraphQL operation; transport errors are GraphQL-shaped with a typed code."""
            content_type = request.headers.get("content-type", "")
            if not content_type.lower().startswith("application/json"):
                return _bad_request("Unsupported content type: send application/json", 415)
            body = await request.body()
            if nests_deeper_than(body):  # before msgspec recurses into it
                return _bad_request(
                    f"The request body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep.",
                    limit="depth",
                )
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
                wait = state["settings"].database.busy_retry_after_seconds
                return _refusal(
                    ErrorCode.UNAVAILABLE, "The service is starting.", 503, {"Retry-After": str(wait)}, retryAfter=wait
                )
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
            except CannotGetOperationTypeError as exc:  # no operation, or several and no operationName
                return _bad_request(operation_selection_message(exc))
            except MissingQueryError:  # "query": ""
                return _bad_request("No GraphQL query found in the request.")
            payload: dict[str, Any] = {"data": result.data}
            headers = None
            if result.errors:
                wait = services.settings.database.busy_retry_after_seconds
                # ErrorCodes typed them all but one raised from an extension's own hook: typed here.
                errors = [(e if (e.extensions or {}).get("code") else typed(e, wait)).formatted for e in result.errors]
                payload["errors"] = errors
                headers = _retry_after(errors)
            if result.extensions:
                payload["extensions"] = result.extensions
            return Response(msgspec.json.encode(payload), media_type=MediaType.JSON, headers=headers)

    return GraphQLController
