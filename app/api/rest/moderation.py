"""``/moderation``: attempt review and overrides, for callers whose token carries the moderator role."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Response

from app.api.rest.dependencies import provide_principal, provide_services
from app.api.rest.problems import problem_responses
from app.auth import Principal, require_moderator
from app.db.moderation_store import AttemptFilter
from app.domain.moderation_contract import AttemptDetail, AttemptPage, OverrideInput, OverrideResult
from app.domain.moderation_rules import PageCursor, TimeOutOfRange, decode_cursor, utc_in_range
from app.domain.quiz import UnlockState
from app.errors import ErrorCode, ServiceError
from app.services.container import Services

__all__ = ["ModerationController"]

_ACCESS = (
    "Needs a token whose roles claim (`[moderation] roles_claim`, default `app_metadata.roles`) lists the "
    "moderator role: 401 without a token, 403 `FORBIDDEN` without the role (a service-role token included). "
    "Every call is written to the audit log. Errors are application/problem+json with a `code` member."
)
_FLAG = r"^[A-Za-z0-9_.:\-]{1,64}$"
_IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,200}$"


async def provide_moderator(principal: NamedDependency[Principal]) -> Principal:
    """The verified caller, when a moderator (FORBIDDEN otherwise)."""
    return require_moderator(principal)


def _utc(value: datetime | None, name: str) -> datetime | None:
    """``value`` in UTC; BAD_USER_INPUT without an offset or out of range (never a driver error)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ServiceError(ErrorCode.BAD_USER_INPUT, f"{name} needs a UTC offset (e.g. ...Z).", field=name)
    try:
        return utc_in_range(value)
    except TimeOutOfRange as exc:
        raise ServiceError(ErrorCode.BAD_USER_INPUT, f"{name}: {exc}", field=name) from None


class ModerationController(Controller):
    path = "/moderation"
    tags = ["moderation"]
    dependencies = {
        "services": Provide(provide_services, sync_to_thread=False),
        "principal": Provide(provide_principal),
        "moderator": Provide(provide_moderator),
    }

    @get(
        "/attempts",
        summary="List attempts",
        description="Submitted attempts, newest first, filtered and paged by an opaque `cursor` (pass "
        "`nextCursor` back, with the same filters). Times are ISO 8601 with an offset, in the years 2000 to "
        "9999 once in UTC (400 `BAD_USER_INPUT` otherwise); `submittedSince` is inclusive and "
        "`submittedUntil` exclusive. " + _ACCESS,
        responses=problem_responses(400, 401, 403),
    )
    async def list_attempts(
        self,
        moderator: NamedDependency[Principal],
        services: NamedDependency[Services],
        conversation_id: Annotated[uuid.UUID | None, QueryParameter(name="conversationId")] = None,
        requester_id: Annotated[uuid.UUID | None, QueryParameter(name="requesterId")] = None,
        target_id: Annotated[uuid.UUID | None, QueryParameter(name="targetId")] = None,
        passed: Annotated[bool | None, QueryParameter(name="passed")] = None,
        unlock_state: Annotated[UnlockState | None, QueryParameter(name="unlockState")] = None,
        flag: Annotated[
            str | None, QueryParameter(name="flag", pattern=_FLAG, description="A scorer flag, e.g. prompt_injection.")
        ] = None,
        flagged: Annotated[
            bool | None, QueryParameter(name="flagged", description="true: some question is flagged; false: none.")
        ] = None,
        submitted_since: Annotated[datetime | None, QueryParameter(name="submittedSince")] = None,
        submitted_until: Annotated[datetime | None, QueryParameter(name="submittedUntil")] = None,
        cursor: Annotated[str | None, QueryParameter(name="cursor", max_length=200)] = None,
        limit: Annotated[int | None, QueryParameter(name="limit", ge=1, le=500)] = None,
    ) -> AttemptPage:
        """A page of attempts matching every given filter."""
        settings = services.moderation.settings
        if limit is not None and limit > settings.max_page_size:
            raise ServiceError(
                ErrorCode.BAD_USER_INPUT, f"limit must be at most {settings.max_page_size}.", field="limit"
            )
        since = _utc(submitted_since, "submittedSince")
        until = _utc(submitted_until, "submittedUntil")
        if since is not None and until is not None and since >= until:
            raise ServiceError(
                ErrorCode.BAD_USER_INPUT, "submittedSince must be before submittedUntil.", field="submittedSince"
            )
        after: PageCursor | None = None
        if cursor is not None:
            try:
                after = decode_cursor(cursor)
            except ValueError as exc:
                raise ServiceError(ErrorCode.BAD_USER_INPUT, str(exc), field="cursor") from None
        where = AttemptFilter(
            conversation_id=conversation_id,
            requester_id=requester_id,
            target_id=target_id,
            passed=passed,
            unlock_state=unlock_state,
            flag=flag,
            flagged=flagged,
            submitted_since=since,
            submitted_until=until,
        )
        return await services.moderation.list_attempts(moderator, where, after, limit or settings.page_size)

    @get(
        "/attempts/{attempt_id:uuid}",
        summary="Read an attempt in full",
        description="The answers, each question's score with its scorer (name and version), criteria, flags "
        "and fallbacks, the quiz with its answer keys, the conversation's current state and the decisions "
        "made on the attempt. " + _ACCESS,
        responses=problem_responses(400, 401, 403, 404),
    )
    async def attempt(
        self,
        attempt_id: FromPath[uuid.UUID],
        moderator: NamedDependency[Principal],
        services: NamedDependency[Services],
    ) -> AttemptDetail:
        """One attempt, for review."""
        return await services.moderation.attempt_detail(moderator, attempt_id)

    @post(
        "/attempts/{attempt_id:uuid}/override",
        summary="Override an attempt's outcome",
        description="Decisions: `UNLOCK` unlocks the conversation as if the attempt had passed (both people "
        "are told); `LOCK` revokes an unlock (the requester may take a new quiz under the usual retry "
        "rules); `ALLOW_RETRY` excuses a failed attempt so it no longer counts towards the cooldown or the "
        "daily limit (the requester is told). The change goes through the outbox and the live status "
        "subscription like any unlock. 201 with the stored decision; 200 with `applied: false` when the "
        "conversation already is as decided (nothing stored), or with `replayed: true` when the "
        "`Idempotency-Key` was seen before. 409 `CONFLICT` when the decision does not apply (ALLOW_RETRY "
        "on a passed attempt or an unlocked conversation), the conversation changed meanwhile, or the key "
        "was used for another request. `reason` is required; it is stored and never logged. " + _ACCESS,
        responses=problem_responses(400, 401, 403, 404, 409),
    )
    async def override(
        self,
        attempt_id: FromPath[uuid.UUID],
        data: JSONBody[OverrideInput],
        moderator: NamedDependency[Principal],
        services: NamedDependency[Services],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key",
                pattern=_IDEMPOTENCY_KEY,
                description="Makes a retried request return the first answer instead of deciding again.",
            ),
        ] = None,
    ) -> Response[OverrideResult]:
        """Apply a moderator's decision to the attempt's conversation."""
        result = await services.moderation.override(moderator, attempt_id, data, idempotency_key)
        created = result.applied and not result.replayed
        return Response(result, status_code=201 if created else 200)
