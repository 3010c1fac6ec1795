"""The root schema: merges the domain's queries, mutations and subscriptions and installs the extensions."""

from __future__ import annotations

from collections.abc import Iterator

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache

from app.api.graphql.errors import ErrorCodes
from app.api.graphql.limits import limit_extensions
from app.api.graphql.operation_selection import OperationSelection
from app.api.graphql.resolvers import Mutation, Query
from app.api.graphql.subscriptions import Subscription
from app.settings import GraphQLSettings

__all__ = ["build_schema"]


class _Schema(strawberry.Schema):
    def process_errors(self, errors, execution_context=None) -> None:  # type: ignore[no-untyped-def]
        # ErrorCodes logs the unexpected ones; expected failures are not worth a traceback.
        return None


class _ParserCache(ParserCache):
    """Strawberry's parser cache, minus a hole: its ``on_parse`` raises a syntax error from the hook
    itself, which escapes the operation before :class:`ErrorCodes` can type it. A document that does
    not parse is left to Strawberry's own parse, whose error is reported as a normal result."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        try:
            context.graphql_document = self.cached_parse_document(context.query, **context.parse_options)
        except GraphQLError:
            context.graphql_document = None
        yield


def build_schema(limits: GraphQLSettings | None = None, *, production: bool = False) -> strawberry.Schema:
    """A fresh schema enforcing ``limits`` (default: the ``[graphql]`` defaults; introspection off in
    ``production``). Parser/validation caches matter: graphql-core validation costs over 1 ms a request."""
    return _Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[
            ErrorCodes,
            OperationSelection,  # before ValidationCache: it stops the validation hooks after it
            *limit_extensions(limits or GraphQLSettings(), production=production),
            lambda: _ParserCache(maxsize=256),
            lambda: ValidationCache(maxsize=256),
        ],
    )
