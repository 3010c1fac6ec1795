"""Litestar dependencies shared by the REST controllers."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from app.api.json_nesting import MAX_JSON_DEPTH, nests_deeper_than
from app.auth import Principal
from app.errors import ErrorCode, ServiceError
from app.services.container import Services

__all__ = ["provide_principal", "provide_services", "refuse_deeply_nested_body"]


def provide_services(state: State) -> Services:
    """The running services (UNAVAILABLE while the lifespan starts them)."""
    services = state.get("services")
    if services is None:
        raise ServiceError(ErrorCode.UNAVAILABLE, "The service is starting.")
    return services


async def refuse_deeply_nested_body(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook: a body that a handler will decode (it takes ``data``) and that nests deeper than
    :data:`~app.api.json_nesting.MAX_JSON_DEPTH` is refused as BAD_USER_INPUT before any decoder recurses
    into it. Reading the body here is free for the handler: Litestar keeps it for the decoder."""
    if "data" not in request.route_handler.parsed_fn_signature.parameters:
        return
    if nests_deeper_than(await request.body()):
        raise ServiceError(
            ErrorCode.BAD_USER_INPUT,
            f"The request body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep.",
            limit="depth",
        )


async def provide_principal(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Principal:
    """The verified caller (UNAUTHENTICATED otherwise)."""
    return await services.verifier.verify_authorization_header(request.headers.get("authorization"))
