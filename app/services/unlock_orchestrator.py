"""The unlock consumer: applies QUIZ_COMPLETED events to conversations, exactly once per event.

A pass unlocks the conversation by compare-and-set (never over a moderator's lock); a failure sets only
the requester's own retry state (``app.domain.requester_state``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import msgspec
import structlog

from app.adapters.event_bus import MalformedEventError
from app.adapters.pubsub import PubSub
from app.db.engine import Database
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.profile_store import ProfileStore
from app.domain.events import ConversationStatusChanged, EventEnvelope, EventType, QuizCompleted, decode_payload
from app.domain.moderation_rules import lock_covers
from app.domain.quiz import UnlockState
from app.domain.requester_state import RequesterState, apply_completed

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
        fails the whole batch rolls back, and the relay retries the events one by one. An event naming
        no conversation raises ``MalformedEventError`` (dead-lettered, never retried)."""
        relevant = [e for e in envelopes if e.event_type is EventType.QUIZ_COMPLETED]
        if relevant:
            await self._apply_batch(relevant)

    async def apply(self, envelope: EventEnvelope) -> ConversationStatusChanged | None:
        """Apply one QUIZ_COMPLETED event; returns the status published, or ``None`` for a duplicate."""
        return (await self._apply_batch([envelope]))[0]

    async def _apply_batch(self, envelopes: Sequence[EventEnvelope]) -> list[ConversationStatusChanged | None]:
        # Set-based: a batch costs a few statements (record, lock-read, conditional unlock, requester
        # states, append), not a few per event. Events apply in order, so two for one conversation compose.
        events = []
        for envelope in envelopes:
            event = decode_payload(envelope)
            if not isinstance(event, QuizCompleted):
                raise MalformedEventError(f"{envelope.event_type.value} payload is not a QuizCompleted")
            events.append((envelope, event))
        now = self._clock()
        statuses: list[ConversationStatusChanged | None] = []
        async with self._db.transaction():
            fresh = await self._outbox.record_processed_many(CONSUMER_GROUP, [e.event_id for e, _ in events], now)
            # Locked until commit on PostgreSQL, so a moderator's LOCK waits for us or we for it; the
            # unlock itself is compare-and-set besides, so a decision committed meanwhile always wins.
            conversations = await self._profiles.lock_conversations(
                {event.conversation_id for envelope, event in events if envelope.event_id in fresh}
            )
            shared = {cid: record.unlock_state for cid, record in conversations.items()}
            # A pass under a moderator's lock that has been lifted since never unlocks (lock_covers): the
            # decisions are read only for conversations such a pass could still unlock.
            unlockable = {
                cid
                for cid, r in conversations.items()
                if r.unlock_state is not UnlockState.UNLOCKED and r.moderation_locked_at is None
            }
            history = await self._profiles.moderation_history(
                {e.conversation_id for envelope, e in events if envelope.event_id in fresh and e.passed} & unlockable
            )
            appended, own_states = [], {}
            for envelope, event in events:
                if envelope.event_id not in fresh:
                    log.info("duplicate event ignored", event_id=str(envelope.event_id))
                    statuses.append(None)
                    continue
                fresh.discard(envelope.event_id)  # the same event twice in one batch applies once
                record = conversations.get(event.conversation_id)
                if record is None:
                    raise MalformedEventError(f"conversation {event.conversation_id} does not exist")
                current = shared[event.conversation_id]
                outcome = apply_completed(
                    current,
                    record.moderation_locked_at is not None,
                    event.passed,
                    event.unlock_state,
                    event.retry_available_at,
                    pass_revoked=lock_covers(history.get(event.conversation_id, ()), event.completed_at),
                )
                state = outcome.state
                if outcome.unlock and not await self._profiles.unlock_conversation(event.conversation_id, now):
                    state = UnlockState.LOCKED  # a moderator's lock won the race: it stands
                if state is UnlockState.UNLOCKED:
                    shared[event.conversation_id] = UnlockState.UNLOCKED
                else:
                    own, own_retry_at = (
                        (outcome.own_state, outcome.own_retry_available_at)
                        if outcome.own_state is not None
                        else (state, outcome.retry_available_at)
                    )
                    own_states[(event.conversation_id, event.requester_id)] = RequesterState(
                        conversation_id=event.conversation_id,
                        requester_id=event.requester_id,
                        unlock_state=own,
                        retry_available_at=own_retry_at,
                        attempt_id=event.attempt_id,
                        updated_at=now,
                    )
                status = ConversationStatusChanged(
                    conversation_id=event.conversation_id,
                    participant_ids=record.participant_ids,
                    unlock_state=state,
                    attempt_id=event.attempt_id,
                    score=event.score,
                    retry_available_at=outcome.retry_available_at,
                    updated_at=now,
                    requester_id=event.requester_id,
                )
                # An unlocked conversation stays quiet; every failure tells the requester when to retry,
                # except under a moderator's lock (reported LOCKED, which has no event: no "retry now").
                if state in _STATE_EVENTS and (state is not current or state is not UnlockState.UNLOCKED):
                    appended.append(new_envelope(_STATE_EVENTS[state], event.conversation_id, status, now))
                statuses.append(status)
            await self._profiles.set_requester_states(list(own_states.values()))
            await self._outbox.append(appended)
        self._on_events_written()
        for status in statuses:
            if status is not None:
                await self._pubsub.publish(status_channel(status.conversation_id), self._encoder.encode(status))
                log.info(
                    "conversation updated",
                    conversation_id=str(status.conversation_id),
                    unlock_state=status.unlock_state.value,
                )
        return statuses
