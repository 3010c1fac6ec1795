"""Abuse limits of the GraphQL endpoint: depth, aliases, tokens, estimated cost and introspection.

Each limit is a graphql-core validation rule (tokens: a parser option), so a refused document never
reaches a resolver, and the same schema extensions run for HTTP and for WebSocket operations. Strawberry's
own limiters are used where they exist; only the cost estimate is written here. Refusals carry
``extensions.code = BAD_USER_INPUT`` and ``extensions.limit`` naming the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)

from app.errors import ErrorCode
from app.settings import GraphQLSettings

__all__ = ["LIMIT_EXTENSION_KEY", "limit_extensions", "operation_cost"]

LIMIT_EXTENSION_KEY = "limit"
"""The ``extensions`` member naming which limit refused a document."""


class _LimitContext:
    """A validation context whose errors are tagged with the limit that raised them; the rest is forwarded."""

    def __init__(self, context: ValidationContext, limit: str) -> None:
        self._context = context
        self._limit = limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def report_error(self, error: GraphQLError) -> None:
        error.extensions = {
            **(error.extensions or {}),
            "code": ErrorCode.BAD_USER_INPUT.value,
            LIMIT_EXTENSION_KEY: self._limit,
        }
        self._context.report_error(error)


def _tagged(rule: type[ValidationRule], limit: str) -> type[ValidationRule]:
    class Tagged(rule):  # type: ignore[valid-type, misc]
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(_LimitContext(context, limit))  # type: ignore[arg-type]

    Tagged.__name__ = Tagged.__qualname__ = f"{limit.title()}Limit"
    return Tagged


def _named(type_: Any) -> tuple[Any, bool]:
    """Unwrap non-null and list wrappers: the named type, and whether a list was among them."""
    is_list = False
    while isinstance(type_, GraphQLNonNull | GraphQLList):
        is_list = is_list or isinstance(type_, GraphQLList)
        type_ = type_.of_type
    return type_, is_list


def _selection_cost(
    selection_set: SelectionSetNode | None,
    parent: Any,
    schema: GraphQLSchema,
    fragments: Mapping[str, FragmentDefinitionNode],
    list_factor: int,
    visiting: frozenset[str],
) -> int:
    if selection_set is None:
        return 0
    total = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            name = selection.name.value
            if name.startswith("__"):
                continue  # introspection has its own switch and is cheap
            fields = parent.fields if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType) else {}
            field = fields.get(name)
            if field is None:
                continue  # unknown fields are reported by the standard rules
            child, is_list = _named(field.type)
            cost = 1 + _selection_cost(selection.selection_set, child, schema, fragments, list_factor, visiting)
            total += cost * (list_factor if is_list else 1)
        elif isinstance(selection, InlineFragmentNode):
            condition = selection.type_condition
            target = schema.get_type(condition.name.value) if condition else parent
            total += _selection_cost(selection.selection_set, target, schema, fragments, list_factor, visiting)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:
                continue  # unknown and cyclic fragments are reported by the standard rules
            target = schema.get_type(fragment.type_condition.name.value)
            total += _selection_cost(fragment.selection_set, target, schema, fragments, list_factor, visiting | {name})
    return total


def operation_cost(
    operation: OperationDefinitionNode,
    schema: GraphQLSchema,
    fragments: Mapping[str, FragmentDefinitionNode],
    list_factor: int,
) -> int:
    """Estimated cost of one operation: each field 1 plus its selections, times ``list_factor`` for lists."""
    root = schema.get_root_type(operation.operation)
    return _selection_cost(operation.selection_set, root, schema, fragments, list_factor, frozenset())


def _complexity_rule(max_complexity: int, list_factor: int) -> type[ValidationRule]:
    class ComplexityLimit(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            document = context.document
            fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
            for definition in document.definitions:
                if not isinstance(definition, OperationDefinitionNode):
                    continue
                cost = operation_cost(definition, context.schema, fragments, list_factor)
                if cost > max_complexity:
                    name = definition.name.value if definition.name else "anonymous"
                    context.report_error(
                        GraphQLError(
                            f"Operation '{name}' is too complex: estimated cost {cost}, allowed {max_complexity}.",
                            definition,
                        )
                    )

    return ComplexityLimit


def limit_extensions(settings: GraphQLSettings, *, production: bool) -> list[Callable[[], SchemaExtension]]:
    """Schema extension factories enforcing ``settings``; introspection follows ``production`` unless set."""
    rules: list[type[ValidationRule]] = [
        _tagged(QueryDepthLimiter(max_depth=settings.max_depth).validation_rules[0], "depth"),
        _tagged(MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules[0], "aliases"),
        _tagged(_complexity_rule(settings.max_complexity, settings.list_cost_factor), "complexity"),
    ]
    introspection = (not production) if settings.introspection is None else settings.introspection
    if not introspection:
        rules.append(_tagged(NoSchemaIntrospectionCustomRule, "introspection"))
    frozen = list(rules)  # built once: the validation cache keys on the rule classes
    return [
        lambda: MaxTokensLimiter(max_token_count=settings.max_tokens),
        lambda: AddValidationRules(frozen),
    ]
