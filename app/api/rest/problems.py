"""Every REST error as ``application/problem+json`` (RFC 9457) with the same codes as GraphQL."""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec

from app.db.errors import is_database_outage
from app.errors import ErrorCode, ServiceError

__all__ = ["PROBLEM_JSON", "Problem", "exception_handlers", "problem", "problem_responses", "retry_after_seconds"]

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger(__name__)

_STATUS_CODES = {
    400: ErrorCode.BAD_USER_INPUT,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.BAD_USER_INPUT,
    409: ErrorCode.CONFLICT,
    410: ErrorCode.PAYLOAD_EXPIRED,
    413: ErrorCode.BAD_USER_INPUT,
    415: ErrorCode.BAD_USER_INPUT,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}


class Problem(msgspec.Struct, frozen=True):
    """RFC 9457 problem details with this service's ``code`` (the same codes as GraphQL's ``extensions.code``)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str
    retryAfter: int | None = None


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI response entries for the given error statuses, all ``application/problem+json``."""
    return {
        status: ResponseSpec(
            Problem,
            description=f"{_STATUS_CODES.get(status, ErrorCode.INTERNAL).value} (and the other codes of this status)",
            media_type=PROBLEM_JSON,
        )
        for status in statuses
    }


def problem(request: Request[Any, Any, Any], status: int, code: ErrorCode, detail: str, **extra: Any) -> Response[Any]:
    """Build a problem response; ``retryAfter`` also becomes a ``Retry-After`` header."""
    headers = {"Retry-After": str(extra["retryAfter"])} if "retryAfter" in extra else None
    body = {
        "type": f"urn:connection-key:error:{code.value.lower()}",
        "title": code.value.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code.value,
        "instance": request.url.path,
        **extra,
    }
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def retry_after_seconds(request: Request[Any, Any, Any]) -> int:
    """The ``Retry-After`` given with an UNAVAILABLE that did not name one: ``[database]
    busy_retry_after_seconds``, the time contention usually takes to clear."""
    settings = request.app.state.get("settings")
    return settings.database.busy_retry_after_seconds if settings is not None else 1


def _unavailable(request: Request[Any, Any, Any], exc: BaseException, detail: str, **extra: Any) -> Response[Any]:
    # Our outage, not the caller's mistake: a warning without the traceback (the error type says which
    # outage; the message may quote SQL and values, so it is not logged).
    if is_database_outage(exc):
        log.warning("database_unavailable", path=request.url.path, error_type=type(exc).__name__)
    extra.setdefault("retryAfter", retry_after_seconds(request))
    return problem(request, 503, ErrorCode.UNAVAILABLE, detail, **extra)


def _service_error(request: Request[Any, Any, Any], exc: ServiceError) -> Response[Any]:
    if exc.code is ErrorCode.UNAVAILABLE:
        return _unavailable(request, exc, exc.message, **exc.extra)
    return problem(request, exc.code.http_status, exc.code, exc.message, **exc.extra)


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors = exc.extra if isinstance(exc.extra, list) else None
    detail = exc.detail or "Invalid request"
    return problem(request, 400, ErrorCode.BAD_USER_INPUT, detail, **({"errors": errors} if errors else {}))


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return _unexpected(request, exc)
    return problem(request, status, _STATUS_CODES.get(status, ErrorCode.BAD_USER_INPUT), exc.detail or "Bad request")


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if is_database_outage(exc):  # busy, locked or away, raw from a driver or a pool
        return _unavailable(request, exc, "The service is busy; try again shortly.")
    log.error("unhandled error", path=request.url.path, error_type=type(exc).__name__, exc_info=exc)
    return problem(request, 500, ErrorCode.INTERNAL, "Internal server error")


exception_handlers: dict[Any, Any] = {
    ServiceError: _service_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
