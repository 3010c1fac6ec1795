"""The unlock consumer: applies QUIZ_COMPLETED events to conversations, exactly once per event."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import msgspec
import structlog

from app.adapters.pubsub import PubSub
from app.db.engine import Database
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.profile_store import ProfileStore
from app.db.tables import Conversation
from app.domain.events import ConversationStatusChanged, EventEnvelope, EventType, QuizCompleted, decode_payload
from app.domain.quiz import UnlockState
from app.domain.unlock_rules import UnlockDecision, next_conversation_state

__all__ = ["CONSUMER_GROUP", "UnlockOrchestrator", "status_channel"]

CONSUMER_GROUP = "unlock-orchestrator"
log = structlog.get_logger(__name__)

_STATE_EVENTS = {
    UnlockState.UNLOCKED: EventType.CONVERSATION_UNLOCKED,
    UnlockState.RETRY_AVAILABLE: EventType.RETRY_AVAILABLE,
    UnlockState.COOLDOWN: EventType.COOLDOWN_STARTED,
}


def status_channel(conversation_id: object) -> str:
    """Pub/sub channel carrying a conversation's live status."""
    return f"connection-key-status:{conversation_id}"


class UnlockOrchestrator:
    """Consumer group ``unlock-orchestrator``. Each event is applied in one transaction together with
    its processed-event record, so a redelivery changes nothing."""

    def __init__(
        self,
        db: Database,
        profiles: ProfileStore,
        outbox: OutboxStore,
        pubsub: PubSub,
        clock: Callable[[], datetime],
        on_events_written: Callable[[], None],
    ) -> None:
        self._db = db
        self._profiles = profiles
        self._outbox = outbox
        self._pubsub = pubsub
        self._clock = clock
        self._on_events_written = on_events_written
        self._encoder = msgspec.json.Encoder()

    async def handle(self, envelopes: Sequence[EventEnvelope]) -> None:
        """Event-bus handler: applies the batch's QUIZ_COMPLETED events, in order, in one transaction
        (one commit per poll, not per event); other event types are not this consumer's. If any event
        fails the whole batch rolls back, and the relay retries the events one by one."""
        relevant = [e for e in envelopes if e.event_type is EventType.QUIZ_COMPLETED]
        if relevant:
            await self._apply_batch(relevant)

    async def apply(self, envelope: EventEnvelope) -> ConversationStatusChanged | None:
        """Apply one QUIZ_COMPLETED event; returns the status published, or ``None`` for a duplicate."""
        return (await self._apply_batch([envelope]))[0]

    async def _apply_batch(self, envelopes: Sequence[EventEnvelope]) -> list[ConversationStatusChanged | None]:
        now = self._clock()
        statuses: list[ConversationStatusChanged | None] = []
        async with self._db.transaction():
            for envelope in envelopes:
                statuses.append(await self._apply_one(envelope, now))
        self._on_events_written()
        for status in statuses:
            if status is not None:
                await self._pubsub.publish(status_channel(status.conversation_id), self._encoder.encode(status))
        return statuses

    async def _apply_one(self, envelope: EventEnvelope, now: datetime) -> ConversationStatusChanged | None:
        event = decode_payload(envelope)
        assert isinstance(event, QuizCompleted)
        if not await self._outbox.record_processed(CONSUMER_GROUP, envelope.event_id, now):
            log.info("duplicate event ignored", event_id=str(envelope.event_id))
            return None
        conversation = await self._profiles.get_conversation(event.conversation_id)
        if conversation is None:
            raise LookupError(f"conversation {event.conversation_id} does not exist")
        decision = UnlockDecision(event.unlock_state, event.retry_available_at)
        state = next_conversation_state(conversation.unlock_state, decision)
        changed = state is not conversation.unlock_state
        values: dict = {Conversation.unlock_state: state.value, Conversation.updated_at: now}
        if state is UnlockState.UNLOCKED and changed:
            values[Conversation.unlocked_at] = now
        await Conversation.update(values).where(Conversation.id == conversation.id).run()
        status = ConversationStatusChanged(
            conversation_id=conversation.id,
            participant_ids=conversation.participant_ids,
            unlock_state=state,
            attempt_id=event.attempt_id,
            score=event.score,
            retry_available_at=None if state is UnlockState.UNLOCKED else event.retry_available_at,
            updated_at=now,
        )
        # An already-unlocked conversation stays quiet; every failure tells the requester when to retry.
        if changed or state is not UnlockState.UNLOCKED:
            await self._outbox.append([new_envelope(_STATE_EVENTS[state], conversation.id, status, now)])
        log.info("conversation updated", conversation_id=str(conversation.id), unlock_state=state.value)
        return status
