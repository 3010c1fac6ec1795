"""Permission classes. A failed check raises the ServiceError itself, so the client gets its exact code."""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission

from app.api.graphql.context import Info

__all__ = ["IsAuthenticated"]


class IsAuthenticated(BasePermission):
    """The request carries a valid token (UNAUTHENTICATED otherwise)."""

    message = "Authentication required"
    error_extensions = {"code": "UNAUTHENTICATED"}

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        await info.context.principal()
        return True
