"""Subscriptions: a conversation's live unlock status, for its two participants."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

import msgspec
import strawberry
import structlog

from app.api.graphql.context import GraphQLContext, Info
from app.api.graphql.resolvers import _uuid, viewer_state
from app.api.graphql.types import ConnectionKeyStatus
from app.api.graphql.websocket import CLOSE_FELL_BEHIND
from app.domain.events import ConversationStatusChanged
from app.errors import ErrorCode, ServiceError
from app.services.unlock_orchestrator import status_channel

__all__ = ["Subscription"]

log = structlog.get_logger(__name__)
_decoder = msgspec.json.Decoder(ConversationStatusChanged)


async def _status_stream(
    context: GraphQLContext, conversation_id: uuid.UUID, viewer: uuid.UUID
) -> AsyncGenerator[ConnectionKeyStatus, None]:
    services = context.services
    # Subscribe before reading the row: a change between the two then arrives twice, never not at all.
    async with services.pubsub.subscribe(status_channel(conversation_id)) as messages:
        record = await services.profile_store.get_conversation(conversation_id)
        if record is not None:  # each participant sees their own retry state, not the other's
            yield ConnectionKeyStatus.of_conversation(
                record, await viewer_state(services.profile_store, record, viewer)
            )
        async for message in messages:
            try:
                status = _decoder.decode(message)
            except msgspec.DecodeError:  # ValidationError included
                log.warning("status_message_unreadable", conversation_id=str(conversation_id))
                continue
            if (shown := ConnectionKeyStatus.for_viewer(status, viewer)) is not None:
                yield shown
    # The pub/sub ended the stream: this subscriber fell behind (or the server is stopping). Say so with
    # a close code rather than a quiet `complete`, so the client reconnects and resubscribes.
    if context.connection is None:
        raise ServiceError(ErrorCode.UNAVAILABLE, "The status stream ended: subscribe again.")
    log.info("subscriber_dropped", conversation_id=str(conversation_id))
    context.connection.begin_close(CLOSE_FELL_BEHIND, "Subscriber fell behind")
    await asyncio.Event().wait()  # the closing socket cancels this operation


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="A conversation's unlock status, for its participants: the current state first, then each "
        "change (CONVERSATION_UNLOCKED, RETRY_AVAILABLE, COOLDOWN). Errors (UNAUTHENTICATED, NOT_FOUND, "
        "FORBIDDEN) come instead of a stream."
    )
    async def connection_key_status(
        self, info: Info, conversation_id: strawberry.ID
    ) -> AsyncIterator[ConnectionKeyStatus]:
        # Checked before the stream exists, so a refusal is the protocol's `error` message, not an event.
        cid = _uuid(conversation_id, "conversationId")
        user_id = await info.context.user_id()
        record = await info.context.services.profile_store.get_conversation(cid)
        if record is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "Conversation not found.")
        if user_id not in record.participant_ids:
            raise ServiceError(ErrorCode.FORBIDDEN, "You are not part of this conversation.")
        return _status_stream(info.context, cid, user_id)
