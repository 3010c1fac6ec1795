"""Maps every GraphQL error to a typed ``extensions.code``; unexpected errors are logged and masked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
from graphql.error import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from app.errors import ErrorCode, ServiceError

__all__ = ["ErrorCodes"]

log = structlog.get_logger(__name__)


def _typed(error: GraphQLError) -> GraphQLError:
    original = error.original_error
    if isinstance(original, ServiceError):
        return GraphQLError(
            original.message,
            error.nodes,
            error.source,
            error.positions,
            error.path,
            original,
            extensions={"code": original.code.value, **original.extra},
        )
    client_error = isinstance(original, (InvalidOperationTypeError, CannotGetOperationTypeError)) or (
        isinstance(original, GraphQLError) and error.path is None  # during execution it would be a server bug
    )
    if original is None or client_error:
        # Parse and validation errors (unknown field, wrong argument type...), variables that do not
        # coerce (graphql-core wraps the inner GraphQLError, whose message quotes the values: never
        # logged) and a subscription sent over HTTP: the client's to fix.
        code = (error.extensions or {}).get("code") or ErrorCode.BAD_USER_INPUT.value
        return GraphQLError(
            error.message,
            error.nodes,
            error.source,
            error.positions,
            error.path,
            None,
            extensions={**(error.extensions or {}), "code": code},
        )
    log.error("unexpected error in resolver", path=error.path, error_type=type(original).__name__, exc_info=original)
    return GraphQLError(
        "Internal server error",
        error.nodes,
        error.source,
        error.positions,
        error.path,
        None,
        extensions={"code": ErrorCode.INTERNAL.value},
    )


class ErrorCodes(SchemaExtension):
    """Rewrites an operation's errors when it ends, and each streamed result's (subscriptions, operations
    over WebSocket) before it is sent."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is not None and getattr(result, "errors", None):
            result.errors = [_typed(e) for e in result.errors]
        if self.execution_context.pre_execution_errors:
            self.execution_context.pre_execution_errors = [
                _typed(e) for e in self.execution_context.pre_execution_errors
            ]

    def on_stream_result(self, result: Any) -> Iterator[None]:
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = [_typed(e) for e in errors]
            # Strawberry also keeps these as the pre-execution errors: share the typed ones, so that
            # on_operation does not log an unexpected error a second time.
            if self.execution_context.pre_execution_errors is errors:
                self.execution_context.pre_execution_errors = result.errors
        yield
