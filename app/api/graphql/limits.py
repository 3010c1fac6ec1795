"""Abuse limits of the GraphQL endpoint: depth, aliases, tokens, estimated cost and introspection.

Each limit is a graphql-core validation rule (tokens: a parser option), so a refused document never
reaches a resolver, and the same schema extensions run for HTTP and for WebSocket operations. Strawberry's
token limiter is used; depth, aliases and cost are written here because they must look at each fragment once
per document (strawberry's depth and alias limiters re-walk a fragment at every spread: a chain of fragments
each spreading the next twice took exponential time to validate, on the event loop, before any login check).
Refusals carry ``extensions.code = BAD_USER_INPUT`` and ``extensions.limit`` naming the limit.
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
    MaxTokensLimiter,
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


class _PerFragment:
    """A measure of one document's selections in which each fragment is measured once: measuring it again at
    every spread would make ``fragment F{i} { ...F{i+1} ...F{i+1} }`` chains cost exponential time to
    *validate*, before any limit could refuse them."""

    def __init__(self, fragments: Mapping[str, FragmentDefinitionNode]) -> None:
        self._fragments = fragments
        self._memo: dict[str, int] = {}
        self._visiting: set[str] = set()

    def fragment(self, name: str) -> int:
        if name in self._memo:
            return self._memo[name]
        fragment = self._fragments.get(name)
        if fragment is None or name in self._visiting:
            return 0  # unknown and cyclic fragments are reported by the standard rules
        self._visiting.add(name)
        self._memo[name] = measure = self._measure(fragment)
        self._visiting.discard(name)
        return measure

    def _measure(self, fragment: FragmentDefinitionNode) -> int:
        raise NotImplementedError


class _CostEstimate(_PerFragment):
    """Cost of one document's selections (see :func:`operation_cost`)."""

    def __init__(self, schema: GraphQLSchema, fragments: Mapping[str, FragmentDefinitionNode], list_factor: int):
        super().__init__(fragments)
        self._schema = schema
        self._list_factor = list_factor

    def selections(self, selection_set: SelectionSetNode | None, parent: Any) -> int:
        if selection_set is None:
            return 0
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                name = selection.name.value
                if name.startswith("__"):
                    total += 1  # introspection has its own switch; counted so it cannot be repeated for free
                    continue
                fields = parent.fields if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType) else {}
                field = fields.get(name)
                if field is None:
                    continue  # unknown fields are reported by the standard rules
                child, is_list = _named(field.type)
                cost = 1 + self.selections(selection.selection_set, child)
                total += cost * (self._list_factor if is_list else 1)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self._schema.get_type(condition.name.value) if condition else parent
                total += self.selections(selection.selection_set, target)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.fragment(selection.name.value)
        return total

    def _measure(self, fragment: FragmentDefinitionNode) -> int:
        return self.selections(fragment.selection_set, self._schema.get_type(fragment.type_condition.name.value))


def operation_cost(
    operation: OperationDefinitionNode,
    schema: GraphQLSchema,
    fragments: Mapping[str, FragmentDefinitionNode],
    list_factor: int,
) -> int:
    """Estimated cost of one operation: each field 1 plus its selections, times ``list_factor`` for lists."""
    root = schema.get_root_type(operation.operation)
    return _CostEstimate(schema, fragments, list_factor).selections(operation.selection_set, root)


def _fragments_of(context: ValidationContext) -> dict[str, FragmentDefinitionNode]:
    return {d.name.value: d for d in context.document.definitions if isinstance(d, FragmentDefinitionNode)}


class _Levels(_PerFragment):
    """How many levels of fields a selection set holds (introspection fields not counted)."""

    def of(self, selection_set: SelectionSetNode | None) -> int:
        if selection_set is None:
            return 0
        deepest = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                levels = 0 if selection.name.value.startswith("__") else 1 + self.of(selection.selection_set)
            elif isinstance(selection, InlineFragmentNode):
                levels = self.of(selection.selection_set)
            else:
                levels = self.fragment(selection.name.value)
            deepest = max(deepest, levels)
        return deepest

    def _measure(self, fragment: FragmentDefinitionNode) -> int:
        return self.of(fragment.selection_set)


def _alias_rule(max_aliases: int) -> type[ValidationRule]:
    """Refuses a document with more than ``max_aliases`` aliased fields, each alias counted once where it is
    written. Aliases are how one request repeats a mutation under several response keys, and every such
    key is written out; strawberry's limiter expands fragments at every spread instead (exponential)."""

    class AliasLimit(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self._count = 0

        def enter_field(self, node: FieldNode, *_: Any) -> None:
            if node.alias is not None:
                self._count += 1

        def leave_document(self, node: Any, *_: Any) -> None:
            if self._count > max_aliases:
                self.report_error(
                    GraphQLError(f"{self._count} aliases in one document; at most {max_aliases} are allowed.", node)
                )

    return AliasLimit


def _depth_rule(max_depth: int) -> type[ValidationRule]:
    """Refuses an operation whose deepest field sits more than ``max_depth`` levels below its root fields
    (``{ me { userId } }`` is depth 1), the way strawberry's ``QueryDepthLimiter`` counts, in linear time."""

    class DepthLimit(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            levels = _Levels(_fragments_of(context))
            for definition in context.document.definitions:
                if isinstance(definition, OperationDefinitionNode):
                    depth = levels.of(definition.selection_set) - 1
                    if depth > max_depth:
                        name = definition.name.value if definition.name else "anonymous"
                        context.report_error(
                            GraphQLError(f"'{name}' exceeds maximum operation depth of {max_depth}", definition)
                        )

    return DepthLimit


def _complexity_rule(max_complexity: int, list_factor: int) -> type[ValidationRule]:
    class ComplexityLimit(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            fragments = _fragments_of(context)
            for definition in context.document.definitions:
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
        _tagged(_depth_rule(settings.max_depth), "depth"),
        _tagged(_alias_rule(settings.max_aliases), "aliases"),
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
