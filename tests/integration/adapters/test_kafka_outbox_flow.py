"""Outbox relay -> Kafka -> unlock orchestrator, with the broker down at first: the events wait in the
outbox, drain in order per conversation once the broker is up, and a poison event is dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import timedelta

import pytest

from app.adapters.event_bus import BusUnavailableError
from app.adapters.kafka_bus import KafkaEventBus
from app.api.graphql.resolvers import viewer_state
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.tables import ConnectionKeyEvent, utcnow
from app.domain.events import EventType, QuizCompleted
from app.domain.quiz import UnlockState
from app.services.container import open_services
from app.services.outbox_relay import OutboxRelay
from app.settings import Settings
from tests import kafka_server as kafka_fixtures
from tests.kafka_server import KafkaTestServer, TansuBroker

kafka_topic = kafka_fixtures.kafka_topic
tansu_broker = kafka_fixtures.tansu_broker


def completed(conversation_id: uuid.UUID, state: UnlockState, requester: uuid.UUID | None = None) -> QuizCompleted:
    now = utcnow()
    return QuizCompleted(
        attempt_id=uuid.uuid4(),
        key_id=uuid.uuid4(),
        conversation_id=conversation_id,
        requester_id=requester or uuid.uuid4(),
        target_id=uuid.uuid4(),
        score=1.0 if state is UnlockState.UNLOCKED else 0.2,
        passed=state is UnlockState.UNLOCKED,
        unlock_state=state,
        retry_available_at=None if state is UnlockState.UNLOCKED else now + timedelta(hours=1),
        completed_at=now,
    )


@pytest.mark.asyncio
async def test_events_wait_in_the_outbox_while_the_broker_is_down_then_drain_in_order(
    settings: Settings, tansu_broker: TansuBroker, kafka_topic: str
) -> None:
    server = KafkaTestServer(tansu_broker.bootstrap_servers, tansu=True, idempotent=False)
    tansu_broker.stop()
    async with open_services(settings, background=False) as services:
        store = services.profile_store
        first = await store.get_or_create_conversation(uuid.uuid4(), uuid.uuid4(), utcnow())
        second = await store.get_or_create_conversation(uuid.uuid4(), uuid.uuid4(), utcnow())
        missing = uuid.uuid4()
        outbox = OutboxStore()
        # The last one, applied after the first, leaves that conversation in COOLDOWN; reordered, RETRY_AVAILABLE.
        outcomes = [
            (first.id, UnlockState.RETRY_AVAILABLE),
            (missing, UnlockState.UNLOCKED),
            (second.id, UnlockState.UNLOCKED),
            (first.id, UnlockState.COOLDOWN),
        ]
        # One requester per conversation: the retry state is theirs (the other participant's is separate).
        requester = {first.id: first.participant_ids[0], second.id: second.participant_ids[0], missing: uuid.uuid4()}
        events = [
            new_envelope(EventType.QUIZ_COMPLETED, c, completed(c, s, requester[c]), utcnow()) for c, s in outcomes
        ]
        async with services.db.transaction():
            await outbox.append(events)

        options = server.bus_options(request_timeout_ms=1_000, max_attempts=2, retry_backoff_seconds=0.01)
        bus = KafkaEventBus(server.bootstrap_servers, topic=kafka_topic, **options)
        bus.subscribe(f"unlock-{uuid.uuid4().hex[:8]}", services.orchestrator.handle)
        relay = OutboxRelay(outbox, bus, utcnow, poll_seconds=0.1)
        async with bus:
            with pytest.raises(BusUnavailableError):  # broker down: the relay backs off, nothing is marked failed
                await relay.drain()
            assert len(await outbox.unpublished(10)) == 4
            rows = await ConnectionKeyEvent.select(ConnectionKeyEvent.publish_attempts).run()
            assert all(row["publish_attempts"] == 0 for row in rows)

            tansu_broker.start()
            deadline = time.monotonic() + 30
            while await outbox.unpublished(10):  # what the relay's loop does, after its backoff
                assert time.monotonic() < deadline, "the outbox did not drain"
                with contextlib.suppress(BusUnavailableError):  # the broker may still be starting
                    await relay.drain()
                await asyncio.sleep(0.1)

            async def state(conversation_id: uuid.UUID) -> UnlockState:
                record = await store.get_conversation(conversation_id)
                assert record is not None
                return (await viewer_state(store, record, requester[conversation_id])).unlock_state

            def dead_lettered() -> int:
                return sum(stats["deadLettered"] for stats in bus.health()["consumers"].values())

            while (await state(first.id), await state(second.id), dead_lettered()) != (
                UnlockState.COOLDOWN,
                UnlockState.UNLOCKED,
                1,
            ):
                assert time.monotonic() < deadline + 30, "the orchestrator did not catch up"
                await asyncio.sleep(0.1)
            health = bus.health()
        (stats,) = health["consumers"].values()
        assert stats["deadLettered"] == 1 and "does not exist" in stats["lastError"]
