"""NotificationService without servers: who is told what, retries with backoff, pruning, and that
nothing ever raises into the caller. (The same service against real databases and the fake push
servers: tests/integration/test_notifications.py.)"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict, deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from app.db.device_store import DeviceRecord
from app.db.outbox_store import new_envelope
from app.domain.events import ConversationStatusChanged, EventType
from app.domain.quiz import UnlockState
from app.errors import ServiceError
from app.services.notifications import (
    DeliveryReport,
    NotificationPolicy,
    NotificationService,
    compose_messages,
    token_hash,
)
from plugins.notifier import PushMessage, PushOutcome, PushStatus

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ALICE, BOB = uuid.UUID(int=1), uuid.UUID(int=2)


class MemoryDevices:
    """The DeviceStore interface over a dict (the real one is tested against SQLite and PostgreSQL)."""

    def __init__(self, *devices: tuple[uuid.UUID, str, str]) -> None:
        self.rows: dict[str, DeviceRecord] = {}
        self.errors: dict[str, str] = {}
        self.fail = False
        for user_id, platform, token in devices:
            self.rows[token] = DeviceRecord(uuid.uuid4(), user_id, platform, token, NOW, NOW, None)

    async def register(self, user_id: uuid.UUID, platform: str, token: str, now: datetime, **_: Any) -> DeviceRecord:
        self.rows[token] = DeviceRecord(uuid.uuid4(), user_id, platform, token, now, now, None)
        return self.rows[token]

    async def unregister(self, token: str, user_id: uuid.UUID | None = None) -> bool:
        row = self.rows.get(token)
        if row is None or (user_id is not None and row.user_id != user_id):
            return False
        del self.rows[token]
        return True

    async def tokens_for(self, user_ids: Collection[uuid.UUID]) -> list[DeviceRecord]:
        if self.fail:
            raise ConnectionError("database down")
        return [row for row in self.rows.values() if row.user_id in user_ids]

    async def prune(self, tokens: Collection[str]) -> int:
        return sum(self.rows.pop(token, None) is not None for token in tokens)

    async def record_errors(self, errors: Mapping[str, str], now: datetime) -> None:
        self.errors.update(errors)


@dataclass
class ScriptedNotifier:
    """Answers each token by its scripted outcomes in order, then ``delivered``; records every batch."""

    name: str
    platforms: frozenset[str]
    script: defaultdict[str, deque[tuple[PushStatus, float | None]]] = field(default_factory=lambda: defaultdict(deque))
    batches: list[list[PushMessage]] = field(default_factory=list)
    raises: int = 0  # the next n calls raise
    hangs: int = 0  # the next n calls never answer
    omit: set[str] = field(default_factory=set)  # tokens it "forgets" to answer
    entered: int = 0
    exited: int = 0

    async def __aenter__(self) -> ScriptedNotifier:
        self.entered += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited += 1

    def then(self, token: str, *outcomes: PushStatus | tuple[PushStatus, float]) -> None:
        for outcome in outcomes:
            self.script[token].append(outcome if isinstance(outcome, tuple) else (outcome, None))

    async def send(self, batch: Sequence[PushMessage]) -> list[PushOutcome]:
        self.batches.append(list(batch))
        if self.raises:
            self.raises -= 1
            raise RuntimeError("plugin bug")
        if self.hangs:
            self.hangs -= 1
            await asyncio.Event().wait()
        outcomes = []
        for message in batch:
            if message.token in self.omit:
                continue
            queue = self.script[message.token]
            status, retry_after = queue.popleft() if queue else (PushStatus.DELIVERED, None)
            outcome = PushOutcome(token=message.token, status=status, detail=status.value, retry_after=retry_after)
            outcomes.append(outcome)
        return outcomes

    def sent_to(self, token: str) -> int:
        return sum(m.token == token for batch in self.batches for m in batch)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Names:
    names: dict[uuid.UUID, str]

    async def get_profile(self, user_id: uuid.UUID) -> Any:
        name = self.names.get(user_id)
        return None if name is None else type("P", (), {"display_name": name})()


@pytest.fixture
def fcm() -> ScriptedNotifier:
    return ScriptedNotifier("fcm", frozenset({"android"}))


@pytest.fixture
def apns() -> ScriptedNotifier:
    return ScriptedNotifier("apns", frozenset({"ios"}))


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def service(
    devices: MemoryDevices, *notifiers: ScriptedNotifier, sleeps: Sleeps | None = None, **policy: Any
) -> NotificationService:
    return NotificationService(
        devices,  # type: ignore[arg-type]
        notifiers,
        NotificationPolicy(**{"backoff_base_seconds": 0.5, "max_backoff_seconds": 10.0, **policy}),
        profiles=Names({ALICE: "Alice", BOB: "Bob"}),
        clock=lambda: NOW,
        sleep=sleeps or Sleeps(),
        rng=random.Random(7),
    )


def status(state: UnlockState = UnlockState.UNLOCKED, retry_at: datetime | None = None) -> ConversationStatusChanged:
    return ConversationStatusChanged(
        conversation_id=uuid.UUID(int=99),
        participant_ids=[ALICE, BOB],
        unlock_state=state,
        attempt_id=uuid.uuid4(),
        score=0.42,
        retry_available_at=retry_at,
        updated_at=NOW,
    )


# -- who is told what ------------------------------------------------------------------------------


def _devices() -> list[DeviceRecord]:
    return [
        DeviceRecord(uuid.uuid4(), ALICE, "android", "alice-phone", NOW, NOW, None),
        DeviceRecord(uuid.uuid4(), ALICE, "ios", "alice-tablet", NOW, NOW, None),
        DeviceRecord(uuid.uuid4(), BOB, "android", "bob-phone", NOW, NOW, None),
    ]


def test_unlocked_tells_both_participants_naming_only_the_other_person() -> None:
    names = {ALICE: "Alice", BOB: "Bob"}
    messages = compose_messages(status(), _devices(), names, requester_id=None, now=NOW, ttl_seconds=600)
    by_token = {m.token: m for m in messages}
    assert sorted(by_token) == ["alice-phone", "alice-tablet", "bob-phone"]
    assert by_token["alice-phone"].body == "You and Bob can now message each other."
    assert by_token["bob-phone"].body == "You and Alice can now message each other."
    assert by_token["alice-tablet"].platform == "ios"
    for message in messages:
        assert message.title == "Conversation unlocked"
        assert message.collapse_key == f"ck:{uuid.UUID(int=99)}" and message.ttl_seconds == 600
        assert message.data == {
            "type": "CONVERSATION_UNLOCKED",
            "conversationId": str(uuid.UUID(int=99)),
            "unlockState": "UNLOCKED",
        }
        assert "0.42" not in msgspec.json.encode(message).decode()  # no score, no answers


def test_retry_available_tells_only_the_requester() -> None:
    later = NOW + timedelta(hours=1)
    retry = status(UnlockState.RETRY_AVAILABLE, later)
    messages = compose_messages(retry, _devices(), {BOB: "Bob"}, requester_id=ALICE, now=NOW, ttl_seconds=60)
    assert sorted(m.token for m in messages) == ["alice-phone", "alice-tablet"]
    assert messages[0].title == "You can try again soon"
    assert messages[0].body == "Take Bob's Connection Key again when the cooldown ends."
    assert messages[0].data["retryAvailableAt"] == later.isoformat()
    [now_message, *_] = compose_messages(
        status(UnlockState.RETRY_AVAILABLE, NOW), _devices(), {}, requester_id=ALICE, now=NOW, ttl_seconds=60
    )
    assert (now_message.title, now_message.body) == ("You can try again", "Take the Connection Key again now.")


@pytest.mark.parametrize(
    ("state", "requester"),
    [
        (UnlockState.COOLDOWN, ALICE),
        (UnlockState.LOCKED, ALICE),
        (UnlockState.RETRY_AVAILABLE, None),
        (UnlockState.RETRY_AVAILABLE, uuid.UUID(int=3)),  # not a participant
    ],
)
def test_other_changes_tell_no_one(state: UnlockState, requester: uuid.UUID | None) -> None:
    assert compose_messages(status(state), _devices(), {}, requester_id=requester, now=NOW, ttl_seconds=60) == []


def test_display_names_are_cleaned_for_the_lock_screen() -> None:
    names = {BOB: "\u202eB\x00ob  the\n builder " + "x" * 80}
    [message] = [
        m
        for m in compose_messages(status(), _devices(), names, requester_id=None, now=NOW, ttl_seconds=60)
        if m.token == "alice-phone"
    ]
    assert message.body == f"You and Bob the builder {'x' * 24} can now message each other."


# -- delivery --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_each_device_gets_one_push_routed_by_platform(fcm: ScriptedNotifier, apns: ScriptedNotifier) -> None:
    devices = MemoryDevices((ALICE, "android", "alice-phone"), (ALICE, "ios", "alice-tablet"), (BOB, "android", "b"))
    async with service(devices, fcm, apns) as notifications:
        report = await notifications.notify_status(status())
    assert report == DeliveryReport(messages=3, delivered=3, attempts=1)
    assert [sorted(m.token for m in batch) for batch in fcm.batches] == [["alice-phone", "b"]]
    assert [[m.token for m in batch] for batch in apns.batches] == [["alice-tablet"]]
    assert (fcm.entered, fcm.exited, apns.entered, apns.exited) == (1, 1, 1, 1)


@pytest.mark.asyncio
async def test_retryable_outcomes_are_retried_with_exponential_backoff_and_jitter(
    fcm: ScriptedNotifier, sleeps: Sleeps
) -> None:
    devices = MemoryDevices((ALICE, "android", "flaky"), (BOB, "android", "fine"))
    fcm.then("flaky", PushStatus.RETRYABLE, PushStatus.RETRYABLE, PushStatus.DELIVERED)
    report = await service(devices, fcm, sleeps=sleeps).notify_status(status())
    assert report == DeliveryReport(messages=2, delivered=2, attempts=3)
    assert fcm.sent_to("flaky") == 3 and fcm.sent_to("fine") == 1
    first, second = sleeps.delays
    assert 0.5 <= first <= 1.0 and 1.0 <= second <= 2.0  # base * 2^n, plus up to as much jitter


@pytest.mark.asyncio
async def test_retry_after_is_honoured_and_one_beyond_the_cap_ends_the_retries(
    fcm: ScriptedNotifier, sleeps: Sleeps
) -> None:
    devices = MemoryDevices((ALICE, "android", "slow"), (BOB, "android", "never"))
    fcm.then("slow", (PushStatus.RETRYABLE, 7.0))
    fcm.then("never", (PushStatus.RETRYABLE, 3600.0))
    report = await service(devices, fcm, sleeps=sleeps).notify_status(status())
    assert report == DeliveryReport(messages=2, delivered=1, failed=1, attempts=2)
    assert sleeps.delays == [7.0]
    assert fcm.sent_to("never") == 1
    assert devices.errors == {"never": "retryable (retry-after 3600s)"}


@pytest.mark.asyncio
async def test_attempts_are_bounded_and_the_last_error_recorded(fcm: ScriptedNotifier, sleeps: Sleeps) -> None:
    devices = MemoryDevices((ALICE, "android", "down"))
    fcm.then("down", *[PushStatus.RETRYABLE] * 10)
    notifications = service(devices, fcm, sleeps=sleeps, max_attempts=3, max_backoff_seconds=1.5)
    report = await notifications.notify_status(status())
    assert report == DeliveryReport(messages=1, failed=1, attempts=3)
    assert fcm.sent_to("down") == 3 and len(sleeps.delays) == 2 and max(sleeps.delays) <= 1.5
    assert devices.errors == {"down": "retryable"} and "down" in devices.rows
    assert notifications.counts["undelivered"] == 1 and notifications.counts["retryable"] == 3


@pytest.mark.asyncio
async def test_invalid_tokens_are_pruned_and_failures_not_retried(fcm: ScriptedNotifier, sleeps: Sleeps) -> None:
    devices = MemoryDevices((ALICE, "android", "dead"), (ALICE, "android", "refused"), (BOB, "android", "ok"))
    fcm.then("dead", PushStatus.INVALID_TOKEN)
    fcm.then("refused", PushStatus.FAILED)
    notifications = service(devices, fcm, sleeps=sleeps)
    report = await notifications.notify_status(status())
    assert report == DeliveryReport(messages=3, delivered=1, pruned=1, failed=1, attempts=1)
    assert sorted(devices.rows) == ["ok", "refused"] and devices.errors == {"refused": "failed"}
    assert sleeps.delays == []
    assert notifications.counts["pruned"] == 1


@pytest.mark.asyncio
async def test_a_raising_or_hanging_notifier_is_retried_and_a_missing_outcome_fails(
    fcm: ScriptedNotifier, apns: ScriptedNotifier, sleeps: Sleeps
) -> None:
    devices = MemoryDevices((ALICE, "android", "a"), (BOB, "ios", "b"), (BOB, "android", "forgotten"))
    fcm.raises, apns.hangs = 1, 1
    fcm.omit.add("forgotten")
    report = await service(devices, fcm, apns, sleeps=sleeps, send_timeout_seconds=0.05).notify_status(status())
    assert report == DeliveryReport(messages=3, delivered=2, failed=1, attempts=2)
    assert devices.errors == {"forgotten": "fcm: no outcome"}


@pytest.mark.asyncio
async def test_platforms_without_a_notifier_are_counted_not_sent(fcm: ScriptedNotifier) -> None:
    devices = MemoryDevices((ALICE, "ios", "i"), (BOB, "android", "a"))
    report = await service(devices, fcm).notify_status(status())
    assert report == DeliveryReport(messages=2, delivered=1, no_notifier=1, attempts=1)


@pytest.mark.asyncio
async def test_nothing_raises_into_the_caller(fcm: ScriptedNotifier) -> None:
    devices = MemoryDevices((ALICE, "android", "a"))
    devices.fail = True
    notifications = service(devices, fcm)
    assert await notifications.notify_status(status()) == DeliveryReport()
    assert notifications.counts["errors"] == 1
    await notifications.handle([new_envelope(EventType.CONVERSATION_UNLOCKED, uuid.uuid4(), status(), NOW)])
    assert await notifications.drain(1)
    assert notifications.counts["errors"] == 2


@pytest.mark.asyncio
async def test_disabled_sends_nothing_and_retry_without_requester_is_skipped(fcm: ScriptedNotifier) -> None:
    devices = MemoryDevices((ALICE, "android", "a"))
    assert await service(devices, fcm, enabled=False).notify_status(status()) == DeliveryReport()
    notifications = service(devices, fcm)
    assert await notifications.notify_status(status(UnlockState.RETRY_AVAILABLE)) == DeliveryReport()
    assert notifications.counts["skipped_no_requester"] == 1
    report = await notifications.notify_status(status(UnlockState.RETRY_AVAILABLE), requester_id=ALICE)
    assert report.delivered == 1 and fcm.batches[0][0].title == "You can try again"


# -- the event-bus consumer ------------------------------------------------------------------------


class Processed:
    def __init__(self) -> None:
        self.seen: set[uuid.UUID] = set()

    async def record_processed_many(self, consumer: str, ids: Sequence[uuid.UUID], now: datetime) -> set[uuid.UUID]:
        assert consumer == "push-notifications"
        fresh = set(ids) - self.seen
        self.seen |= fresh
        return fresh


@pytest.mark.asyncio
async def test_handle_delivers_status_events_once_each_in_the_background(fcm: ScriptedNotifier) -> None:
    devices = MemoryDevices((ALICE, "android", "a"), (BOB, "android", "b"))
    notifications = NotificationService(devices, [fcm], processed=Processed(), clock=lambda: NOW)  # type: ignore[arg-type]
    unlocked = new_envelope(EventType.CONVERSATION_UNLOCKED, uuid.UUID(int=99), status(), NOW)
    cooldown = new_envelope(EventType.COOLDOWN_STARTED, uuid.UUID(int=99), status(UnlockState.COOLDOWN), NOW)
    async with notifications:
        await notifications.handle([unlocked, cooldown])
        await notifications.handle([unlocked])  # redelivered: already handled
        assert await notifications.drain(1)
    assert sorted(m.token for batch in fcm.batches for m in batch) == ["a", "b"]
    assert notifications.describe() == {
        "routes": {"android": "fcm"},
        "inFlight": 0,
        "counts": {"delivered": 2},
    }


@pytest.mark.asyncio
async def test_background_deliveries_are_bounded_and_cancelled_at_shutdown(fcm: ScriptedNotifier) -> None:
    devices = MemoryDevices((ALICE, "android", "a"))
    fcm.hangs = 5
    notifications = service(devices, fcm, max_in_flight=2, drain_seconds=0.05, send_timeout_seconds=60)
    async with notifications:
        assert notifications.submit(status()) and notifications.submit(status())
        assert not notifications.submit(status())
        assert notifications.counts["dropped"] == 1
        await asyncio.sleep(0.01)
        assert not await notifications.drain(0.01)
    assert notifications.describe()["inFlight"] == 0 and fcm.exited == 1


# -- registration ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_register_validates_the_platform_and_token(fcm: ScriptedNotifier) -> None:
    devices = MemoryDevices()
    notifications = service(devices, fcm)
    record = await notifications.register_device(ALICE, " iOS ", " " + "ab" * 32 + "\n")
    assert (record.platform, record.token) == ("ios", "ab" * 32)
    for platform, token, field_name in [("blackberry", "x" * 20, "platform"), ("android", "has space tok", "token")]:
        with pytest.raises(ServiceError) as error:
            await notifications.register_device(ALICE, platform, token)
        assert error.value.code.value == "BAD_USER_INPUT" and error.value.extra == {"field": field_name}
    assert not await notifications.unregister_device(BOB, "ab" * 32)
    assert await notifications.unregister_device(ALICE, "ab" * 32)


def test_token_hashes_are_short_and_stable() -> None:
    assert token_hash("abc") == token_hash("abc") != token_hash("abd")
    assert len(token_hash("x" * 4096)) == 16
