"""Queries and mutations: parse input into the shared Structs, call a use case, map the result."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import strawberry

from app.api.graphql.context import Info
from app.api.graphql.permissions import IsAuthenticated
from app.api.graphql.types import (
    ConnectionKeyPayload,
    ConnectionKeyResponseInput,
    ConnectionKeyResult,
    Conversation,
    Device,
    DevicePlatform,
    Profile,
    ProfileInput,
)
from app.db.profile_store import ConversationRecord, ProfileStore
from app.domain import contract
from app.domain.field_crypto import KeyDestroyedError
from app.domain.requester_state import ParticipantView, participant_view
from app.errors import ErrorCode, ServiceError
from app.services.create_key import public_payload
from app.services.limits import enforce_limit
from app.services.profiles import parse_profile_input

__all__ = ["Mutation", "Query", "viewer_state"]


async def viewer_state(store: ProfileStore, record: ConversationRecord, viewer: uuid.UUID) -> ParticipantView:
    """The conversation as ``viewer`` sees it: shared UNLOCKED/LOCKED, or their own retry state."""
    own = await store.requester_state(record.id, viewer)
    return participant_view(record.unlock_state, record.moderation_locked_at is not None, own)


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise ServiceError(ErrorCode.BAD_USER_INPUT, f"{field} is not a valid ID.", field=field) from None


def _client_ip(info: Info) -> str | None:
    request = getattr(info.context, "request", None)
    client = getattr(request, "client", None)
    return client.host if client is not None else None


def _convert(data: dict[str, Any], shape: type[msgspec.Struct], what: str) -> Any:
    try:
        return msgspec.convert(data, shape)
    except msgspec.ValidationError as exc:
        raise ServiceError(ErrorCode.BAD_USER_INPUT, f"Invalid {what}: {exc}") from None


@strawberry.type
class Query:
    @strawberry.field(permission_classes=[IsAuthenticated], description="The caller's own profile.")
    async def me(self, info: Info) -> Profile | None:
        record = await info.context.services.profiles.get(await info.context.user_id())
        return Profile.of(record) if record else None

    @strawberry.field(permission_classes=[IsAuthenticated], description="A conversation the caller takes part in.")
    async def conversation(self, info: Info, id: strawberry.ID) -> Conversation | None:
        store = info.context.services.profile_store
        record = await store.get_conversation(_uuid(id, "id"))
        if record is None:
            return None
        user_id = await info.context.user_id()
        if user_id not in record.participant_ids:
            raise ServiceError(ErrorCode.FORBIDDEN, "You are not part of this conversation.")
        return Conversation.of(record, await viewer_state(store, record, user_id))

    @strawberry.field(permission_classes=[IsAuthenticated], description="The caller's unexpired, unsubmitted keys.")
    async def my_connection_keys(self, info: Info) -> list[ConnectionKeyPayload]:
        services = info.context.services
        payloads = []
        for key_id in await services.key_store.open_keys(await info.context.user_id(), services.clock()):
            try:
                found = await services.key_store.get_quiz(key_id)
            except KeyDestroyedError:  # the target was erased after the open-keys read
                continue
            if found is not None:
                payloads.append(ConnectionKeyPayload.of(public_payload(found[0])))
        return payloads


@strawberry.type
class Mutation:
    @strawberry.mutation(permission_classes=[IsAuthenticated], description="Start a quiz about the target's profile.")
    async def create_connection_key(self, info: Info, target_user_id: strawberry.ID) -> ConnectionKeyPayload:
        payload = await info.context.services.create_key(
            await info.context.user_id(), _uuid(target_user_id, "targetUserId"), client_ip=_client_ip(info)
        )
        return ConnectionKeyPayload.of(payload)

    @strawberry.mutation(permission_classes=[IsAuthenticated], description="Answer a quiz.")
    async def submit_connection_key(self, info: Info, input: ConnectionKeyResponseInput) -> ConnectionKeyResult:
        data = _convert(input.as_struct_data(), contract.ConnectionKeyResponseInput, "submission")
        result = await info.context.services.submit_key(await info.context.user_id(), data, client_ip=_client_ip(info))
        return ConnectionKeyResult.of(result)

    @strawberry.mutation(
        permission_classes=[IsAuthenticated],
        description="Register the caller's device for push notifications (unlocks, retries). A token registered "
        "by someone else moves to the caller.",
    )
    async def register_device(self, info: Info, platform: DevicePlatform, token: str) -> Device:
        services = info.context.services
        user_id = await info.context.user_id()
        if services.settings.rate_limit.enabled:
            await enforce_limit(
                services.limiter, f"device:user:{user_id}", services.settings.rate_limit.create_per_user_per_minute
            )
        return Device.of(await services.notifications.register_device(user_id, platform.value, token))

    @strawberry.mutation(
        permission_classes=[IsAuthenticated],
        description="Stop pushes to this device token; false when the caller had not registered it.",
    )
    async def unregister_device(self, info: Info, token: str) -> bool:
        return await info.context.services.notifications.unregister_device(await info.context.user_id(), token)

    @strawberry.mutation(permission_classes=[IsAuthenticated], description="Write the caller's own profile.")
    async def upsert_my_profile(self, info: Info, input: ProfileInput) -> Profile:
        data = parse_profile_input(input.as_struct_data())
        record = await info.context.services.profiles.upsert(await info.context.user_id(), data)
        return Profile.of(record)
