"""Litestar dependencies shared by the REST controllers."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from app.auth import Principal
from app.errors import ErrorCode, ServiceError
from app.services.container import Services

__all__ = ["provide_principal", "provide_services"]


def provide_services(state: State) -> Services:
    services = state.get("services")
    if services is None:
        raise ServiceError(ErrorCode.UNAVAILABLE, "The service is starting.")
    return services


async def provide_principal(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Principal:
    """The verified caller (UNAUTHENTICATED otherwise)."""
    return await services.verifier.verify_authorization_header(request.headers.get("authorization"))
