"""The push consumer must not swallow a database outage: the event would be committed and its pushes lost."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, datetime

import pytest

from app.adapters.event_bus import TransientHandlerError
from app.db.device_store import DeviceStore
from app.db.outbox_store import new_envelope
from app.domain.events import ConversationStatusChanged, EventType
from app.domain.quiz import UnlockState
from app.services.notifications import NotificationService

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class _Processed:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def record_processed_many(
        self, consumer: str, event_ids: Collection[uuid.UUID], now: datetime
    ) -> set[uuid.UUID]:
        self.calls += 1
        raise self.error


def _unlocked() -> list:
    conversation = uuid.uuid4()
    status = ConversationStatusChanged(
        conversation_id=conversation,
        participant_ids=[uuid.uuid4(), uuid.uuid4()],
        unlock_state=UnlockState.UNLOCKED,
        attempt_id=uuid.uuid4(),
        score=1.0,
        retry_available_at=None,
        updated_at=NOW,
    )
    return [new_envelope(EventType.CONVERSATION_UNLOCKED, conversation, status, NOW)]


@pytest.mark.asyncio
async def test_an_unreachable_database_is_raised_as_transient_so_the_bus_retries() -> None:
    processed = _Processed(ConnectionRefusedError("database down"))
    service = NotificationService(DeviceStore(), [], processed=processed)
    with pytest.raises(TransientHandlerError):
        await service.handle(_unlocked())
    assert processed.calls == 1


@pytest.mark.asyncio
async def test_other_failures_are_counted_and_never_hold_up_the_stream() -> None:
    processed = _Processed(ValueError("a bug, not an outage"))
    service = NotificationService(DeviceStore(), [], processed=processed)
    await service.handle(_unlocked())  # does not raise
    assert service.counts["errors"] == 1
