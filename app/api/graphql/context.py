"""Per-request GraphQL context: services, the lazily verified caller, per-request loaders."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import strawberry
from litestar.datastructures import Headers, State
from strawberry.litestar import BaseContext

from app.auth import Principal
from app.errors import ErrorCode, ServiceError
from app.services.container import Services

if TYPE_CHECKING:
    from app.api.graphql.websocket import SubscriptionConnection

__all__ = ["GraphQLContext", "Info", "context_getter"]


class GraphQLContext(BaseContext, kw_only=True):
    """Created once per request (once per connection over WebSocket, shared by its operations); the
    token is verified on first use (at ``connection_init`` over WebSocket) and the result reused."""

    services: Services
    authorization: str | None = None
    verified: Principal | None = None
    connection_params: dict[str, Any] | None = None
    """The ``connection_init`` payload (WebSocket only); Strawberry sets it."""
    connection: SubscriptionConnection | None = None
    """The WebSocket this context belongs to, for closing it with a code (WebSocket only)."""

    async def principal(self) -> Principal:
        """The verified caller; raises UNAUTHENTICATED."""
        if self.verified is None:
            self.verified = await self.services.verifier.verify_authorization_header(self.authorization)
        return self.verified

    async def user_id(self) -> uuid.UUID:
        """The calling user's id. Service-role tokens act as their ``sub`` here: GraphQL is the
        end-user API, and backends use the REST mirrors to act for someone else."""
        return (await self.principal()).user_id


Info = strawberry.Info[GraphQLContext, None]


async def context_getter(state: State, headers: Headers) -> GraphQLContext:
    """Litestar dependency (HTTP and WebSocket alike) building the context from app state and the
    Authorization header."""
    services = state.get("services")
    if services is None:
        raise ServiceError(ErrorCode.UNAVAILABLE, "The service is starting.")
    return GraphQLContext(services=services, authorization=headers.get("authorization"))
