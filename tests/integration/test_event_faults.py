"""Faults on the event path, on SQLite and PostgreSQL: a moderator's LOCK racing the orchestrator, each
requester's own retry state, two relays on one database, a lease left by a dead instance, the
reconciler's repairs and pruning."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import datetime, timedelta

import msgspec
import pytest

from app.adapters.event_bus import MemoryEventBus
from app.api.graphql.resolvers import viewer_state
from app.api.graphql.types import ConnectionKeyStatus
from app.db.engine import Database
from app.db.key_store import AttemptRow
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.profile_store import ProfileStore
from app.db.tables import (
    ConnectionKeyEvent,
    Conversation,
    ConversationRequesterState,
    ProcessedEvent,
    requester_state_id,
    utcnow,
)
from app.domain.events import ConversationStatusChanged, EventType, QuizCompleted
from app.domain.quiz import UnlockState
from app.domain.scoring import QuestionOutcome
from app.services.container import Services, open_services
from app.services.outbox_relay import OutboxRelay
from app.services.reconciler import Reconciler, repair_event_id
from app.settings import Settings
from tests.integration.test_outbox_relay import Clock
from tests.security.test_encryption_upgrade import _insert, _migrate

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


async def insert_passed_attempt(
    services: Services, conversation_id: uuid.UUID, requester: uuid.UUID, submitted: datetime | None = None
) -> AttemptRow:
    """A passed attempt as the writer stores it (submitted ten minutes ago unless ``submitted``)."""
    submitted = submitted or utcnow() - timedelta(minutes=10)
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


async def test_a_failure_under_a_moderators_lock_is_reported_locked_with_no_retry_event(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        a, b = uuid.uuid4(), uuid.uuid4()
        conversation = await services.profile_store.get_or_create_conversation(a, b, utcnow())
        await lock_by_moderator(conversation.id)
        until = utcnow() + timedelta(minutes=5)
        # An attempt in flight when the lock came: create answers FORBIDDEN now, so no "you may retry".
        status = await apply(
            services, conversation.id, completed(conversation.id, b, UnlockState.RETRY_AVAILABLE, retry_at=until)
        )
        assert (status.unlock_state, status.retry_available_at) == (UnlockState.LOCKED, None)
        events = await ConnectionKeyEvent.select(ConnectionKeyEvent.event_type).run()
        assert [e["event_type"] for e in events] == [], events  # no RETRY_AVAILABLE for notifications
        record = await services.profile_store.get_conversation(conversation.id)
        assert record is not None
        assert (await viewer_state(services.profile_store, record, b)).unlock_state is UnlockState.LOCKED
        # The requester's own retry time is kept, for when a moderator lifts the lock.
        own = await services.profile_store.requester_state(conversation.id, b)
        assert own is not None and (own.unlock_state, own.retry_available_at) == (UnlockState.RETRY_AVAILABLE, until)


async def test_the_reconciler_reports_only_what_it_published(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        outbox, long_ago = OutboxStore(), utcnow() - timedelta(minutes=10)
        held_cid, orphan_cid = uuid.uuid4(), uuid.uuid4()
        held, behind = (
            new_envelope(
                EventType.QUIZ_COMPLETED, held_cid, completed(held_cid, uuid.uuid4(), UnlockState.LOCKED), long_ago
            )
            for _ in range(2)
        )
        orphan = new_envelope(
            EventType.QUIZ_COMPLETED, orphan_cid, completed(orphan_cid, uuid.uuid4(), UnlockState.LOCKED), long_ago
        )
        async with services.db.transaction():
            await outbox.append([held, behind, orphan])
        # A live instance holds the head of one conversation (the row behind it was never leased); the
        # other conversation's row was leased by an instance that died.
        leased = await outbox.lease("live-instance", utcnow(), utcnow() + timedelta(minutes=5), 1)
        assert [row.event_id for row in leased] == [held.event_id]
        await outbox.lease("dead-instance", long_ago, long_ago + timedelta(seconds=30), 10)
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
        assert delivered == [orphan.event_id]
        assert report.republished_events == [orphan.event_id]  # not the row waiting behind the held one


async def test_pruning_goes_in_batches_and_counts_what_it_deleted(settings: Settings) -> None:
    async with open_services(settings, background=False) as services:
        outbox, cid = OutboxStore(), uuid.uuid4()
        old = utcnow() - timedelta(days=settings.outbox.retention_days + 1)
        envelopes = [
            new_envelope(EventType.QUIZ_COMPLETED, cid, completed(cid, uuid.uuid4(), UnlockState.LOCKED), old)
            for _ in range(7)
        ]
        async with services.db.transaction():
            await outbox.append(envelopes)
            await outbox.record_processed_many("consumer", [e.event_id for e in envelopes[:5]], old)
        await outbox.mark_published([row.sequence for row in await outbox.unpublished(10)][:6], old)
        cutoff = utcnow() - timedelta(days=settings.outbox.retention_days)
        assert await outbox.prune(cutoff, batch_size=2) == (6, 5)  # 3 + 3 batches, each its own write
        remaining = await ConnectionKeyEvent.select(ConnectionKeyEvent.event_id).run()
        assert [r["event_id"] for r in remaining] == [envelopes[6].event_id]  # unpublished: kept
        assert await ProcessedEvent.count().run() == 0
        assert await outbox.prune(cutoff, batch_size=2) == (0, 0)


BEFORE_REQUESTER_STATES = "2026-12-03T17:00:01:000000"


async def test_the_upgrade_keeps_each_cooldown_as_its_requesters_own_state(settings: Settings) -> None:
    """Migration 2026-12-03T17:00:02 moves RETRY_AVAILABLE/COOLDOWN off the conversation row: the latest
    attempt's requester keeps the state and its retry time."""
    db = Database(settings.database)
    await db.start()
    try:
        await _migrate(db, BEFORE_REQUESTER_STATES)
        a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        cooling, free = uuid.uuid4(), uuid.uuid4()
        now = utcnow()
        until = now + timedelta(hours=20)
        for cid, state, low, high in ((cooling, "COOLDOWN", a, b), (free, "LOCKED", a, c)):
            await _insert(
                "conversations",
                {
                    "id": cid,
                    "pair_key": f"{low}:{high}",
                    "participant_low": low,
                    "participant_high": high,
                    "unlock_state": state,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        latest = uuid.uuid4()
        for attempt_id, requester, submitted, retry_at in (
            (uuid.uuid4(), b, now - timedelta(hours=2), now - timedelta(hours=1)),  # b's, older
            (latest, a, now - timedelta(minutes=1), until),  # a's failure put the pair in COOLDOWN
        ):
            await _insert(
                "connection_key_attempts",
                {
                    "id": attempt_id,
                    "connection_key_id": uuid.uuid4(),
                    "conversation_id": cooling,
                    "requester_id": requester,
                    "target_id": a if requester == b else b,
                    "responses": "[]",
                    "score": 0.2,
                    "passed": False,
                    "breakdown": "[]",
                    "shadow_breakdown": "[]",
                    "experiments": "{}",
                    "feedback": "[]",
                    "unlock_state": "COOLDOWN",
                    "retry_available_at": retry_at,
                    "started_at": submitted - timedelta(minutes=1),
                    "submitted_at": submitted,
                },
            )
        await _migrate(db, "all")
        rows = await ConversationRequesterState.select().run()
        assert len(rows) == 1, rows
        state = rows[0]
        assert (uuid.UUID(str(state["id"])), uuid.UUID(str(state["requester_id"]))) == (
            requester_state_id(cooling, a),
            a,
        )
        assert (state["unlock_state"], state["retry_available_at"], uuid.UUID(str(state["attempt_id"]))) == (
            "COOLDOWN",
            until,
            latest,
        )
        shared = {r["id"]: r["unlock_state"] for r in await Conversation.select().run()}
        assert {uuid.UUID(str(k)): v for k, v in shared.items()} == {cooling: "LOCKED", free: "LOCKED"}
    finally:
        await db.stop()
