"""Maps every GraphQL error to a typed ``extensions.code``; unexpected errors are logged and masked."""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from graphql.error import GraphQLError
from strawberry.extensions import SchemaExtension

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
    if original is None:
        # Parse and validation errors (unknown field, wrong argument type...): the client's to fix.
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
    """Runs after each operation and rewrites its errors."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is not None and getattr(result, "errors", None):
            result.errors = [_typed(e) for e in result.errors]
        if self.execution_context.pre_execution_errors:
            self.execution_context.pre_execution_errors = [
                _typed(e) for e in self.execution_context.pre_execution_errors
            ]
