"""Which operation of a document runs: the GraphQL spec's GetOperation (6.1), enforced for HTTP and WebSocket.

Strawberry runs the first operation when ``operationName`` is absent, whatever else the document holds; the
spec requires a request error when it holds several. An ``operationName`` that names none of them, an empty
one, and a document of fragments only are request errors too (Strawberry raises them as
``CannotGetOperationTypeError``, which the edges type as ``BAD_USER_INPUT`` with the message below).
"""

from __future__ import annotations

from collections.abc import Iterator

from graphql import OperationDefinitionNode
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError

__all__ = ["OperationNameRequired", "OperationSelection", "operation_selection_message"]


class OperationNameRequired(CannotGetOperationTypeError):
    """Several operations and no ``operationName``. A ``CannotGetOperationTypeError``, so that Strawberry's
    WebSocket path reports it as an operation error and the HTTP handler catches it with its kin."""

    def __init__(self, operations: int) -> None:
        super().__init__(None)
        self.operations = operations

    def as_http_error_reason(self) -> str:
        return f"The document holds {self.operations} operations: name the one to run in operationName."


def operation_selection_message(exc: CannotGetOperationTypeError) -> str:
    """What the client is told when the request selects no single operation."""
    if isinstance(exc, OperationNameRequired):
        return exc.as_http_error_reason()
    if exc.operation_name is None:
        return "The document holds no operation to run."
    return f"The document has no operation named {exc.operation_name!r}."


class OperationSelection(SchemaExtension):
    """Refuses a document of several operations sent without ``operationName``, before validation (so before
    any resolver). Must come before ``ValidationCache`` among the schema's extensions: raising from its own
    ``on_validate`` stops the hooks after it."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        # The name the request gave: Strawberry's ``operation_name`` falls back to the first operation's.
        if document is not None and context._provided_operation_name is None:
            operations = sum(isinstance(d, OperationDefinitionNode) for d in document.definitions)
            if operations > 1:
                raise OperationNameRequired(operations)
        yield
