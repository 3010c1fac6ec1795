"""The outbox relay: commit order, retry of a failing event, and setting a poison event aside."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import datetime, timedelta

import asyncpg
import pytest

from app.adapters.event_bus import BusUnavailableError, MemoryEventBus
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.tables import ConnectionKeyEvent, utcnow
from app.domain.events import EventType, QuizCompleted
from app.domain.quiz import UnlockState
from app.services.container import open_services
from app.services.outbox_relay import OutboxRelay
from app.settings import Settings


class Clock:
    """A clock the test moves, so lease and backoff expiry need no sleeping."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


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
async def test_a_poison_event_beside_healthy_ones_is_dead_lettered_alone_and_counted(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        outbox = OutboxStore()
        conversation = await services.profile_store.get_or_create_conversation(uuid.uuid4(), uuid.uuid4(), utcnow())
        missing = uuid.uuid4()
        unknown = new_envelope(EventType.QUIZ_COMPLETED, missing, _completed(missing, True), utcnow())
        good = new_envelope(EventType.QUIZ_COMPLETED, conversation.id, _completed(conversation.id, True), utcnow())
        async with services.db.transaction():
            await outbox.append([unknown, good])
            # Rows no reader understands: an unknown type, a future schema version, a payload of another shape.
            for event_type, version, payload in (
                ("NO_SUCH_TYPE", 1, "{}"),
                ("QUIZ_COMPLETED", 99, "{}"),
                ("QUIZ_COMPLETED", 1, '{"attemptId": 5}'),
            ):
                await ConnectionKeyEvent.insert(
                    ConnectionKeyEvent(
                        event_id=uuid.uuid4(),
                        event_type=event_type,
                        aggregate_id=uuid.uuid4(),
                        schema_version=version,
                        payload=payload,
                        occurred_at=utcnow(),
                    )
                ).run()
        delivered: list[uuid.UUID] = []

        async def record(envelopes: list) -> None:
            delivered.extend(e.event_id for e in envelopes)

        bus = MemoryEventBus()
        bus.subscribe("unlock", services.orchestrator.handle)
        bus.subscribe("record", record)
        relay = OutboxRelay(outbox, bus, utcnow, max_attempts=2)

        assert await relay.drain() == 2  # the good event and the CONVERSATION_UNLOCKED it caused
        rows = await ConnectionKeyEvent.select().order_by(ConnectionKeyEvent.sequence).run()
        dead = [r for r in rows if r["dead_lettered_at"] is not None]
        assert len(dead) == 4 and relay.dead_lettered == 4 and relay.stats()["deadLettered"] == 4
        assert all(r["published_at"] is not None and r["last_error"] for r in dead)
        assert "MalformedEventError" in next(r for r in dead if r["event_id"] == unknown.event_id)["last_error"]
        assert all(r["publish_attempts"] == 0 for r in rows)  # dead-lettered at once, not after retries
        assert good.event_id in delivered and unknown.event_id not in delivered
        assert (await services.profile_store.get_conversation(conversation.id)).unlock_state is UnlockState.UNLOCKED
        assert await outbox.unpublished(10) == []
        assert await outbox.dead_lettered_count() == 4


@pytest.mark.asyncio
async def test_an_outage_in_one_conversation_is_retried_without_dead_letter_and_others_flow(
    settings: Settings,
) -> None:
    async with open_services(settings, background=False) as services:
        outbox = OutboxStore()
        blocked, *others = [uuid.uuid4() for _ in range(4)]
        events = {
            cid: [new_envelope(EventType.QUIZ_COMPLETED, cid, _completed(cid, False), utcnow()) for _ in range(3)]
            for cid in (blocked, *others)
        }
        async with services.db.transaction():
            for n in range(3):  # interleaved, as commits of several conversations are
                await outbox.append([events[cid][n] for cid in (blocked, *others)])
        outage = {"left": 6}
        delivered: list[uuid.UUID] = []
        errors = [sqlite3.OperationalError("database is locked"), asyncpg.exceptions.DeadlockDetectedError("")]

        async def consumer(envelopes: list) -> None:
            if any(e.aggregate_id == blocked for e in envelopes) and outage["left"] > 0:
                outage["left"] -= 1
                raise errors[outage["left"] % 2]
            delivered.extend(e.event_id for e in envelopes)

        bus = MemoryEventBus()
        bus.subscribe("consumer", consumer)
        clock = Clock()
        relay = OutboxRelay(outbox, bus, clock, max_attempts=2, max_backoff_seconds=1.0)

        await relay.drain()
        # Every other conversation's events went through, in order; the blocked one's wait, uncounted.
        for cid in others:
            assert [e for e in delivered if e in {x.event_id for x in events[cid]}] == [x.event_id for x in events[cid]]
        assert not {x.event_id for x in events[blocked]} & set(delivered)
        for _ in range(20):  # the outage lasts several tries, more than max_attempts: still nobody's fault
            clock.advance(2.0)
            await relay.drain()
        assert [e for e in delivered if e in {x.event_id for x in events[blocked]}] == [
            x.event_id for x in events[blocked]
        ]
        rows = await ConnectionKeyEvent.select().run()
        assert all(r["publish_attempts"] == 0 and r["dead_lettered_at"] is None for r in rows)
        assert relay.dead_lettered == 0 and relay.infrastructure_failures >= 5
        assert await outbox.unpublished(100) == []


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
