"""Maps every GraphQL error to a typed ``extensions.code``; unexpected errors are logged and masked.

Our outage (the database busy, locked or away, or any ``UNAVAILABLE``) is ``UNAVAILABLE`` with
``extensions.retryAfter``, logged as a warning: never an internal error, never the caller's fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
from graphql.error import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from app.api.graphql.operation_selection import operation_selection_message
from app.db.errors import DatabaseUnavailable, is_database_outage
from app.errors import ErrorCode, ServiceError

__all__ = ["ErrorCodes", "typed"]

log = structlog.get_logger(__name__)


def typed(error: GraphQLError, retry_after: int = 1) -> GraphQLError:
    """``error`` with its ``extensions.code`` (and ``retryAfter`` for UNAVAILABLE, ``retry_after`` unless the
    error names one); an unexpected error is logged and masked. Already typed errors pass unchanged."""
    original = error.original_error
    if original is None and (error.extensions or {}).get("code"):
        return error
    if original is not None and is_database_outage(original):
        # Our outage: a warning without traceback or message (a driver's may quote SQL and values).
        log.warning("database_unavailable", path=error.path, error_type=type(original).__name__)
        if not isinstance(original, ServiceError):
            original = DatabaseUnavailable(retry_after=retry_after)
    if isinstance(original, ServiceError):
        extensions = {"code": original.code.value, **original.extra}
        if original.code is ErrorCode.UNAVAILABLE:
            extensions.setdefault("retryAfter", retry_after)
        return GraphQLError(
            original.message, error.nodes, error.source, error.positions, error.path, original, extensions=extensions
        )
    if isinstance(original, CannotGetOperationTypeError):
        return GraphQLError(
            operation_selection_message(original),
            error.nodes,
            error.source,
            error.positions,
            error.path,
            None,
            extensions={"code": ErrorCode.BAD_USER_INPUT.value},
        )
    client_error = isinstance(original, InvalidOperationTypeError) or (
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

    def _retry_after(self) -> int:
        # The GraphQLContext's services carry the settings; a bare execution (tests of the schema) has none.
        services = getattr(self.execution_context.context, "services", None)
        settings = getattr(services, "settings", None)
        return settings.database.busy_retry_after_seconds if settings is not None else 1

    def on_operation(self) -> Iterator[None]:
        yield
        retry_after = self._retry_after()
        result = self.execution_context.result
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = [typed(e, retry_after) for e in errors]  # type: ignore[union-attr]
        before = self.execution_context.pre_execution_errors
        if before:
            # Often the same list as the result's: typed once, so that nothing is logged twice.
            self.execution_context.pre_execution_errors = (
                result.errors if before is errors else [typed(e, retry_after) for e in before]  # type: ignore[union-attr]
            )

    def on_stream_result(self, result: Any) -> Iterator[None]:
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = [typed(e, self._retry_after()) for e in errors]
            # Strawberry also keeps these as the pre-execution errors: share the typed ones, so that
            # on_operation does not log an unexpected error a second time.
            if self.execution_context.pre_execution_errors is errors:
                self.execution_context.pre_execution_errors = result.errors
        yield
