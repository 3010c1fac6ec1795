"""The GraphQL HTTP endpoint: Strawberry's Litestar controller with typed transport errors."""

from __future__ import annotations

from typing import Any

import msgspec
from cross_web import HTTPException
from litestar import Request, Response
from litestar.enums import MediaType
from strawberry.litestar import make_graphql_controller

from app.api.graphql.context import context_getter
from app.api.graphql.schema import build_schema
from app.errors import ErrorCode
from app.settings import Settings

__all__ = ["build_graphql_controller"]


def build_graphql_controller(settings: Settings) -> type:
    """The ``/graphql`` controller: POST only, GraphiQL in development only."""
    base: Any = make_graphql_controller(
        build_schema(),
        path=settings.server.graphql_path,
        graphql_ide="graphiql" if settings.is_development else None,
        context_getter=context_getter,
        allow_queries_via_get=False,
    )

    class GraphQLController(base):  # type: ignore[misc, valid-type]
        async def execute_request(self, request: Request[Any, Any, Any], context: Any, root_value: Any) -> Any:
            # Strawberry answers a bad request (malformed JSON, wrong field types, GET) with plain text;
            # clients branch on extensions.code, so answer in GraphQL's own error shape instead.
            try:
                return await self.run(request, context=context, root_value=root_value)
            except HTTPException as exc:
                code = ErrorCode.BAD_USER_INPUT if exc.status_code < 500 else ErrorCode.INTERNAL
                body = {"data": None, "errors": [{"message": exc.reason, "extensions": {"code": code.value}}]}
                return Response(body, status_code=exc.status_code, media_type=MediaType.JSON)

        def encode_json(self, data: object) -> bytes:
            return msgspec.json.encode(data)

    return GraphQLController
