"""Typed failures shared by every edge: GraphQL maps them to ``extensions.code``, REST to problem+json."""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["ErrorCode", "ServiceError"]


class ErrorCode(str, enum.Enum):
    """The closed set of error codes clients may branch on."""

    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    BAD_USER_INPUT = "BAD_USER_INPUT"
    NOT_FOUND = "NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    PAYLOAD_EXPIRED = "PAYLOAD_EXPIRED"
    PAYLOAD_INVALID = "PAYLOAD_INVALID"
    PAYLOAD_REPLAYED = "PAYLOAD_REPLAYED"
    CONFLICT = "CONFLICT"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL_SERVER_ERROR"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]


_HTTP_STATUS = {
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.BAD_USER_INPUT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.PAYLOAD_EXPIRED: 410,
    ErrorCode.PAYLOAD_INVALID: 400,
    ErrorCode.PAYLOAD_REPLAYED: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class ServiceError(Exception):
    """An expected failure with a client-facing code and message.

    ``extra`` holds machine-readable details (``retryAfter``, ``field``...) that go into GraphQL
    ``extensions`` and problem+json members. Messages must never contain secrets or PII.
    """

    def __init__(self, code: ErrorCode, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def __repr__(self) -> str:
        return f"ServiceError({self.code.value}, {self.message!r})"
