"""Faults on the event path, on SQLite and PostgreSQL: a moderator's LOCK racing the orchestrator, each
requester's own retry state, two relays on one database, a lease left by a dead instance, the
reconciler's repairs and pruning."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import msgspec
import pytest

from app.adapters.event_bus import MemoryEventBus
from app.api.graphql.resolvers import viewer_state
from app.api.graphql.types import ConnectionKeyStatus
from app.db.key_store import AttemptRow
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.profile_store import ProfileStore
from app.db.tables import ConnectionKeyEvent, Conversation, ProcessedEvent, utcnow
from app.domain.events import ConversationStatusChanged, EventType, QuizCompleted
from app.domain.quiz import UnlockState
from app.domain.scoring import QuestionOutcome
from app.services.container import Services, open_services
from app.services.outbox_relay import OutboxRelay
from app.services.reconciler import Reconciler, repair_event_id
from app.settings import Settings
from tests.integration.test_outbox_relay import Clock

pytestmark = pytest.mark.asyncio


def completed(conversation_id: uuid.UUID, requester: uuid.UUID, state: UnlockState, **kw: object) -> QuizCompleted:
    passed = state is UnlockState.UNLOCKED
    return QuizCompleted(
        attempt_id=kw.get("attempt_id", uuid.uuid4()),  # type: ignore[arg-type]
        key_id=uuid.uuid4(),
        conversation_id=conversation_id,
        requester_id=requester,
        target_id=uuid.uuid4(),
        score=1.0 if passed else 0.2,
        passed=passed,
        unlock_state=state,
        retry_available_at=None if passed else kw.get("retry_at", utcnow() + timedelta(minutes=5)),  # type: ignore[arg-type]
        completed_at=utcnow(),
    )


async def apply(services: Services, conversation_id: uuid.UUID, event: QuizCompleted) -> ConversationStatusChanged:
    status = await services.orchestrator.apply(
        new_envelope(EventType.QUIZ_COMPLETED, conversation_id, event, services.clock())
    )
    assert status is not None
    return status


async def lock_by_moderator(conversation_id: uuid.UUID) -> None:
    """What a moderator's LOCK commits (``ModerationStore.move_conversation``)."""
    now = utcnow()
    await (
        Conversation.update(
            {
                Conversation.unlock_state: "LOCKED",
                Conversation.unlocked_at: None,
                Conversation.moderation_locked_at: now,
                Conversation.moderation_decision_id: uuid.uuid4(),
                Conversation.updated_at: now,
            }
        )
        .where(Conversation.id == conversation_id)
        .run()
    )


class StaleReads(ProfileStore):
    """Hands the orchestrator the rows as they were before a moderator's decision committed: the read
    happened, then the LOCK committed, then the orchestrator writes."""

    def __init__(self, inner: ProfileStore, snapshot: dict) -> None:
        super().__init__(inner.encryption)
        self.snapshot = snapshot

    async def lock_conversations(self, ids):  # type: ignore[no-untyped-def]
        return {cid: self.snapshot[cid] for cid in ids if cid in self.snapshot}


@pytest.mark.parametrize("unlocked_before", [True, False])
async def test_a_lock_committed_between_the_orchestrators_read_and_write_survives(
    settings: Settings, unlocked_before: bool
) -> None:
    async with open_services(settings, background=False) as services:
        a, b = uuid.uuid4(), uuid.uuid4()
        conversation = await services.profile_store.get_or_create_conversation(a, b, utcnow())
        if unlocked_before:
            await apply(services, conversation.id, completed(conversation.id, a, UnlockState.UNLOCKED))
        snapshot = await services.profile_store.get_conversations([conversation.id])
        await lock_by_moderator(conversation.id)
        services.orchestrator._profiles = StaleReads(services.profile_store, snapshot)
        # B fails (the old code wrote the stale state back over the LOCK) or passes (and would unlock).
        await apply(services, conversation.id, completed(conversation.id, b, UnlockState.RETRY_AVAILABLE))
        status = await apply(services, conversation.id, completed(conversation.id, b, UnlockState.UNLOCKED))
        if not unlocked_before:  # the unlock was attempted, and the compare-and-set refused it
            assert status.unlock_state is UnlockState.LOCKED
        row = await services.profile_store.get_conversation(conversation.id)
        assert row is not None and row.unlock_state is UnlockState.LOCKED and row.moderation_locked_at is not None


async def test_each_requester_sees_their_own_retry_state(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        a, b = uuid.uuid4(), uuid.uuid4()
        conversation = await services.profile_store.get_or_create_conversation(a, b, utcnow())
        a_until, b_until = utcnow() + timedelta(hours=20), utcnow() + timedelta(minutes=5)
        a_status = await apply(
            services, conversation.id, completed(conversation.id, a, UnlockState.COOLDOWN, retry_at=a_until)
        )
        b_status = await apply(
            services, conversation.id, completed(conversation.id, b, UnlockState.RETRY_AVAILABLE, retry_at=b_until)
        )
        record = await services.profile_store.get_conversation(conversation.id)
        assert record is not None and record.unlock_state is UnlockState.LOCKED  # the pair's state is untouched
        a_view, b_view = (
            await viewer_state(services.profile_store, record, a),
            await viewer_state(services.profile_store, record, b),
        )
        assert (a_view.unlock_state, a_view.retry_available_at) == (UnlockState.COOLDOWN, a_until)
        assert (b_view.unlock_state, b_view.retry_available_at) == (UnlockState.RETRY_AVAILABLE, b_until)
        # The subscription shows each participant their own changes only.
        assert ConnectionKeyStatus.for_viewer(b_status, a) is None
        assert ConnectionKeyStatus.for_viewer(a_status, a).unlock_state is UnlockState.COOLDOWN
        assert ConnectionKeyStatus.for_viewer(b_status, b).unlock_state is UnlockState.RETRY_AVAILABLE
        # An unlock is shared: both see it.
        unlocked = await apply(services, conversation.id, completed(conversation.id, b, UnlockState.UNLOCKED))
        record = await services.profile_store.get_conversation(conversation.id)
        assert record is not None
        for user in (a, b):
            assert (await viewer_state(services.profile_store, record, user)).unlock_state is UnlockState.UNLOCKED
            assert ConnectionKeyStatus.for_viewer(unlocked, user) is not None


async def test_two_relays_on_one_database_publish_each_row_once_in_order(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        outbox = OutboxStore()
        conversations = [uuid.uuid4() for _ in range(12)]
        expected = {cid: [] for cid in conversations}
        for _ in range(5):
            batch = [
                new_envelope(EventType.QUIZ_COMPLETED, cid, completed(cid, uuid.uuid4(), UnlockState.LOCKED), utcnow())
                for cid in conversations
            ]
            for envelope in batch:
                expected[envelope.aggregate_id].append(envelope.event_id)
            async with services.db.transaction():
                await outbox.append(batch)
        seen: list[tuple[str, uuid.UUID, uuid.UUID]] = []

        def consumer(name: str):  # type: ignore[no-untyped-def]
            async def handle(envelopes: list) -> None:
                for envelope in envelopes:
                    seen.append((name, envelope.aggregate_id, envelope.event_id))
                await asyncio.sleep(0.01)  # hold the lease a while, so the other relay runs meanwhile

            return handle

        relays = []
        for name in ("one", "two"):
            bus = MemoryEventBus()
            bus.subscribe("consumer", consumer(name))
            relays.append(OutboxRelay(outbox, bus, utcnow, batch_size=4, owner=name))
        await asyncio.gather(*(relay.drain() for relay in relays))

        counts = Counter(event_id for _, _, event_id in seen)
        assert sorted(counts) == sorted(e for ids in expected.values() for e in ids)
        assert set(counts.values()) == {1}  # each row published once, by one relay
        for cid, ids in expected.items():  # per conversation in commit order, whichever relay sent it
            assert [event_id for _, aggregate, event_id in seen if aggregate == cid] == ids
        assert {name for name, _, _ in seen} == {"one", "two"}  # the work was shared
        rows = await ConnectionKeyEvent.select().run()
        assert all(r["published_at"] is not None and r["publish_attempts"] == 0 for r in rows)


async def test_a_lease_left_by_a_dead_instance_is_taken_after_it_runs_out(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        outbox, clock = OutboxStore(), Clock()
        cid = uuid.uuid4()
        event = new_envelope(EventType.QUIZ_COMPLETED, cid, completed(cid, uuid.uuid4(), UnlockState.LOCKED), utcnow())
        async with services.db.transaction():
            await outbox.append([event])
        dead = await outbox.lease("dead-instance", clock(), clock() + timedelta(seconds=30), 10)
        assert [row.event_id for row in dead] == [event.event_id]
        delivered: list[uuid.UUID] = []

        async def handle(envelopes: list) -> None:
            delivered.extend(e.event_id for e in envelopes)

        bus = MemoryEventBus()
        bus.subscribe("consumer", handle)
        relay = OutboxRelay(outbox, bus, clock, lease_seconds=30)
        assert await relay.drain() == 0 and delivered == []  # held by the other instance
        clock.advance(31)
        assert await relay.drain() == 1 and delivered == [event.event_id]


async def insert_passed_attempt(services: Services, conversation_id: uuid.UUID, requester: uuid.UUID) -> AttemptRow:
    submitted = utcnow() - timedelta(minutes=10)
    outcome = QuestionOutcome(str(uuid.uuid4()), "CONSENT", "rule.choice", "1.0.0", 1.0, True)  # type: ignore[arg-type]
    row = AttemptRow(
        id=uuid.uuid4(),
        connection_key_id=uuid.uuid4(),
        conversation_id=conversation_id,
        requester_id=requester,
        target_id=uuid.uuid4(),
        responses="[]",
        total_elapsed_ms=None,
        score=0.9,
        passed=True,
        breakdown=msgspec.json.encode([outcome]).decode(),
        shadow_breakdown="[]",
        experiments="{}",
        feedback="[]",
        unlock_state="UNLOCKED",
        retry_available_at=None,
        started_at=submitted - timedelta(minutes=1),
        submitted_at=submitted,
    )
    await services.key_store.insert_attempts([row])
    return row


async def test_the_reconciler_repairs_a_lost_unlock_republishes_an_orphan_and_prunes(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        outbox = OutboxStore()
        a, b = uuid.uuid4(), uuid.uuid4()
        conversation = await services.profile_store.get_or_create_conversation(a, b, utcnow())
        attempt = await insert_passed_attempt(services, conversation.id, a)  # its QUIZ_COMPLETED was lost
        orphan_cid = uuid.uuid4()
        orphan = new_envelope(
            EventType.QUIZ_COMPLETED,
            orphan_cid,
            completed(orphan_cid, a, UnlockState.LOCKED),
            utcnow() - timedelta(minutes=10),
        )
        async with services.db.transaction():
            await outbox.append([orphan])
        await outbox.lease("dead-instance", utcnow() - timedelta(minutes=5), utcnow() - timedelta(minutes=4), 10)
        delivered: list[uuid.UUID] = []

        async def handle(envelopes: list) -> None:
            delivered.extend(e.event_id for e in envelopes)

        bus = MemoryEventBus()
        bus.subscribe("consumer", handle)
        relay = OutboxRelay(outbox, bus, utcnow)
        reconciler = Reconciler(
            settings.outbox, outbox, services.profile_store, services.orchestrator, relay, services.clock
        )

        report = await reconciler.run_once()
        assert report.unlocked_attempts == [attempt.id]
        assert report.republished_events == [orphan.event_id] and delivered.count(orphan.event_id) == 1
        record = await services.profile_store.get_conversation(conversation.id)
        assert record is not None and record.unlock_state is UnlockState.UNLOCKED
        again = await reconciler.run_once()  # idempotent: nothing left to fix
        assert again.unlocked_attempts == [] and again.republished_events == []
        processed = await ProcessedEvent.count().where(ProcessedEvent.event_id == repair_event_id(attempt.id)).run()
        assert processed == 1

        # Pruning: published rows and processed ids past retention go; unpublished rows stay whatever their age.
        old = utcnow() - timedelta(days=settings.outbox.retention_days + 1)
        await (
            ConnectionKeyEvent.update({ConnectionKeyEvent.published_at: old})
            .where(ConnectionKeyEvent.published_at.is_not_null())
            .run()
        )
        await ProcessedEvent.update({ProcessedEvent.processed_at: old}, force=True).run()
        kept = new_envelope(EventType.QUIZ_COMPLETED, orphan_cid, completed(orphan_cid, a, UnlockState.LOCKED), old)
        async with services.db.transaction():
            await outbox.append([kept])
        pruned = await outbox.prune(utcnow() - timedelta(days=settings.outbox.retention_days))
        assert pruned[0] >= 2 and pruned[1] >= 1
        remaining = await ConnectionKeyEvent.select(ConnectionKeyEvent.event_id).run()
        assert [r["event_id"] for r in remaining] == [kept.event_id]
        assert await ProcessedEvent.count().run() == 0
