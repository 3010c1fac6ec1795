"""MemoryEventBus: every group gets every batch, in order; a failing handler fails the publish."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest

from app.adapters.event_bus import (
    BusUnavailableError,
    FailureKind,
    MalformedEventError,
    MemoryEventBus,
    TransientHandlerError,
    classify_failure,
)
from app.domain.events import SCHEMA_VERSION, EventEnvelope, EventType, KeyCreated, decode_payload

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)


def envelope(n: int) -> EventEnvelope:
    payload = KeyCreated(
        key_id=uuid.UUID(int=n),
        conversation_id=uuid.UUID(int=2),
        requester_id=uuid.UUID(int=3),
        target_id=uuid.UUID(int=4),
        expires_at=NOW,
    )
    return EventEnvelope(
        event_id=uuid.UUID(int=1000 + n),
        event_type=EventType.KEY_CREATED,
        aggregate_id=uuid.UUID(int=n),
        occurred_at=NOW,
        schema_version=SCHEMA_VERSION,
        payload=msgspec.Raw(msgspec.json.encode(payload)),
    )


class Recorder:
    def __init__(self, name: str, log: list[tuple[str, list[uuid.UUID]]], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def __call__(self, envelopes: Sequence[EventEnvelope]) -> None:
        self.log.append((self.name, [e.event_id for e in envelopes]))
        if self.fail:
            raise RuntimeError(f"{self.name} failed")


@pytest.mark.asyncio
async def test_each_group_gets_each_batch_in_subscription_order() -> None:
    log: list[tuple[str, list[uuid.UUID]]] = []
    async with MemoryEventBus() as bus:
        bus.subscribe("orchestrator", Recorder("orchestrator", log))
        bus.subscribe("notifier", Recorder("notifier", log))
        await bus.publish([envelope(1), envelope(2)])
        await bus.publish([envelope(3)])
    ids = [uuid.UUID(int=1001), uuid.UUID(int=1002)]
    assert log == [
        ("orchestrator", ids),
        ("notifier", ids),
        ("orchestrator", [uuid.UUID(int=1003)]),
        ("notifier", [uuid.UUID(int=1003)]),
    ]


@pytest.mark.asyncio
async def test_handlers_receive_decodable_envelopes() -> None:
    received: list[EventEnvelope] = []

    async def handler(envelopes: Sequence[EventEnvelope]) -> None:
        received.extend(envelopes)

    bus = MemoryEventBus()
    bus.subscribe("g", handler)
    await bus.publish([envelope(7)])
    [event] = received
    payload = decode_payload(event)
    assert isinstance(payload, KeyCreated) and payload.key_id == uuid.UUID(int=7)


@pytest.mark.asyncio
async def test_publishing_without_consumers_is_a_no_op() -> None:
    await MemoryEventBus().publish([envelope(1)])


def test_a_group_subscribes_once() -> None:
    bus = MemoryEventBus()
    bus.subscribe("g", Recorder("a", []))
    with pytest.raises(ValueError, match="'g' already subscribed"):
        bus.subscribe("g", Recorder("b", []))


@pytest.mark.asyncio
async def test_a_failing_handler_fails_the_publish() -> None:
    log: list[tuple[str, list[uuid.UUID]]] = []
    bus = MemoryEventBus()
    bus.subscribe("first", Recorder("first", log, fail=True))
    bus.subscribe("second", Recorder("second", log))
    with pytest.raises(RuntimeError, match="first failed"):
        await bus.publish([envelope(1)])
    assert [name for name, _ in log] == ["first"]  # the relay will retry the batch: not marked published


@pytest.mark.asyncio
async def test_closing_removes_consumers() -> None:
    log: list[tuple[str, list[uuid.UUID]]] = []
    bus = MemoryEventBus()
    async with bus:
        bus.subscribe("g", Recorder("g", log))
    await bus.publish([envelope(1)])
    assert log == []
    bus.subscribe("g", Recorder("g", log))  # the group name is free again


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (sqlite3.OperationalError("database is locked"), FailureKind.INFRASTRUCTURE),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), FailureKind.INFRASTRUCTURE),
        (TransientHandlerError("pool exhausted"), FailureKind.INFRASTRUCTURE),
        (BusUnavailableError("broker away"), FailureKind.INFRASTRUCTURE),
        (MalformedEventError("no such conversation"), FailureKind.MALFORMED),
        (msgspec.ValidationError("bad payload"), FailureKind.MALFORMED),
        (sqlite3.OperationalError("no such column: x"), FailureKind.EVENT),
        (RuntimeError("bug"), FailureKind.EVENT),
    ],
)
def test_failures_are_classified_by_whose_fault_they_are(error: Exception, kind: FailureKind) -> None:
    assert classify_failure(error) is kind
    wrapped = RuntimeError("could not apply the batch")
    wrapped.__cause__ = error
    assert classify_failure(wrapped) is kind  # looked for through what it was raised from
