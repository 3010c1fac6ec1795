"""The outbox relay: commit order, retry of a failing event, and setting a poison event aside."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.adapters.event_bus import BusUnavailableError, MemoryEventBus
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.tables import ConnectionKeyEvent, utcnow
from app.domain.events import EventType, QuizCompleted
from app.domain.quiz import UnlockState
from app.services.container import open_services
from app.services.outbox_relay import OutboxRelay
from app.settings import Settings


def _completed(conversation_id: uuid.UUID, passed: bool) -> QuizCompleted:
    return QuizCompleted(
        attempt_id=uuid.uuid4(),
        key_id=uuid.uuid4(),
        conversation_id=conversation_id,
        requester_id=uuid.uuid4(),
        target_id=uuid.uuid4(),
        score=1.0 if passed else 0.0,
        passed=passed,
        unlock_state=UnlockState.UNLOCKED if passed else UnlockState.RETRY_AVAILABLE,
        retry_available_at=None,
        completed_at=utcnow(),
    )


@pytest.mark.asyncio
async def test_a_poison_event_is_retried_then_set_aside_without_reordering(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        outbox = OutboxStore()
        conversation = await services.profile_store.get_or_create_conversation(uuid.uuid4(), uuid.uuid4(), utcnow())
        missing = uuid.uuid4()
        poison = new_envelope(EventType.QUIZ_COMPLETED, missing, _completed(missing, True), utcnow())
        good = new_envelope(EventType.QUIZ_COMPLETED, conversation.id, _completed(conversation.id, True), utcnow())
        async with services.db.transaction():
            await outbox.append([poison, good])
        bus = MemoryEventBus()
        bus.subscribe("unlock", services.orchestrator.handle)
        relay = OutboxRelay(outbox, bus, utcnow, max_attempts=2)

        assert await relay.drain() == 0  # the poison event fails; the good one waits behind it
        row = await ConnectionKeyEvent.select().where(ConnectionKeyEvent.event_id == poison.event_id).first().run()
        assert row["publish_attempts"] == 1 and row["published_at"] is None and "LookupError" in row["last_error"]
        assert (await services.profile_store.get_conversation(conversation.id)).unlock_state is UnlockState.LOCKED

        assert await relay.drain() == 1  # second failure: set aside; the good one goes through
        row = await ConnectionKeyEvent.select().where(ConnectionKeyEvent.event_id == poison.event_id).first().run()
        assert row["publish_attempts"] == 2 and row["published_at"] is not None and row["last_error"]
        assert (await services.profile_store.get_conversation(conversation.id)).unlock_state is UnlockState.UNLOCKED

        assert await relay.drain() == 1  # the CONVERSATION_UNLOCKED event the consumer wrote
        assert await outbox.unpublished(10) == []
        types = [r["event_type"] for r in await ConnectionKeyEvent.select().order_by(ConnectionKeyEvent.sequence).run()]
        assert types == ["QUIZ_COMPLETED", "QUIZ_COMPLETED", "CONVERSATION_UNLOCKED"]


@pytest.mark.asyncio
async def test_stopping_lets_the_event_in_hand_finish_instead_of_cancelling_it(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        outbox = OutboxStore()
        conversation = await services.profile_store.get_or_create_conversation(uuid.uuid4(), uuid.uuid4(), utcnow())
        event = new_envelope(EventType.QUIZ_COMPLETED, conversation.id, _completed(conversation.id, True), utcnow())
        async with services.db.transaction():
            await outbox.append([event])
        handling, finished = asyncio.Event(), []

        async def slow_consumer(envelopes: list) -> None:
            handling.set()
            await asyncio.sleep(0.2)  # the stop request arrives while this is in progress
            await services.orchestrator.handle(envelopes)
            finished.append(len(envelopes))

        bus = MemoryEventBus()
        bus.subscribe("unlock", slow_consumer)
        async with OutboxRelay(outbox, bus, utcnow):
            await handling.wait()
        assert finished == [1]  # not cancelled mid-transaction
        assert (await services.profile_store.get_conversation(conversation.id)).unlock_state is UnlockState.UNLOCKED
        row = await ConnectionKeyEvent.select().where(ConnectionKeyEvent.event_id == event.event_id).first().run()
        assert row["published_at"] is not None


@pytest.mark.asyncio
async def test_a_bus_outage_never_marks_events_failed(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        outbox = OutboxStore()
        conversation = await services.profile_store.get_or_create_conversation(uuid.uuid4(), uuid.uuid4(), utcnow())
        events = [
            new_envelope(EventType.QUIZ_COMPLETED, conversation.id, _completed(conversation.id, False), utcnow())
            for _ in range(3)
        ]
        async with services.db.transaction():
            await outbox.append(events)
        delivered: list = []

        class FlakyBus(MemoryEventBus):
            down = True

            async def publish(self, envelopes: list) -> None:
                if self.down:
                    raise BusUnavailableError("broker unreachable")
                delivered.extend(e.event_id for e in envelopes)

        bus = FlakyBus()
        relay = OutboxRelay(outbox, bus, utcnow, max_attempts=2)
        for _ in range(5):  # more outages than max_attempts: still nobody's fault
            with pytest.raises(BusUnavailableError):
                await relay.drain()
        rows = await ConnectionKeyEvent.select().order_by(ConnectionKeyEvent.sequence).run()
        assert all(r["publish_attempts"] == 0 and r["last_error"] is None for r in rows)
        bus.down = False
        assert await relay.drain() == 3
        assert delivered == [e.event_id for e in events]  # in order, once each
