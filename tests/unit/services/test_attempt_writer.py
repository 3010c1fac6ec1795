"""AttemptWriter's queue and batches without a database: the bound, the check of each attempt before it
joins a batch, and a failed batch retried member by member (an outage is not). The transaction itself is
exercised against SQLite and PostgreSQL in tests/integration/test_submit_invariants.py; here ``_commit``
is replaced by a stand-in that fails the way a database refusing one row would."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from app.domain.contract import AnswerInput
from app.domain.quiz import IssuedQuiz, QuestionKind, UnlockState
from app.domain.scoring import QuestionOutcome, Verdict
from app.domain.unlock_rules import RetryPolicy, UnlockDecision
from app.errors import ErrorCode, ServiceError
from app.services.attempt_writer import AttemptWriter, InvalidAttempt, PendingAttempt, encode_attempt
from app.settings import DatabaseSettings

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def pending(score: float = 1.0, criteria: Any = None) -> PendingAttempt:
    question_id = uuid.uuid4()
    quiz = IssuedQuiz(
        key_id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        requester_id=uuid.uuid4(),
        target_id=uuid.uuid4(),
        target_name="Ada",
        difficulty=2,
        questions=[],
        signed_payload="v1.x.y.z",
        issued_at=NOW,
        expires_at=NOW + timedelta(minutes=5),
    )
    outcome = QuestionOutcome(
        question_id=str(question_id),
        kind=QuestionKind.COMPREHENSION,
        scorer="plugin.x",
        scorer_version="1",
        score=score,
        passed=True,
        criteria=criteria,
    )
    verdict = Verdict(score=score, passed=True, breakdown=[outcome], feedback=[])
    return PendingAttempt(uuid.uuid4(), quiz, verdict, [AnswerInput(question_id, "tea")])


class StandInWriter(AttemptWriter):
    """The writer with its transaction replaced: ``poison`` keys make any batch holding them fail the way
    a database refusing a value does (a non-outage error); ``outage`` fails every batch as a locked
    database does; ``hold`` keeps the batch in flight."""

    def __init__(self, max_waiting: int = 16) -> None:
        db = SimpleNamespace(settings=DatabaseSettings(busy_retry_after_seconds=3))
        super().__init__(db, None, None, RetryPolicy(60, 3), lambda: NOW, self._written, max_waiting=max_waiting)  # type: ignore[arg-type]
        self.poison: set[uuid.UUID] = set()
        self.outage = False
        self.hold: asyncio.Event | None = None
        self.batches: list[int] = []
        self.announced = 0

    def _written(self) -> None:
        self.announced += 1

    async def _commit(self, batch: list[Any]) -> list[UnlockDecision | Exception]:  # type: ignore[override]
        self.batches.append(len(batch))
        if self.hold is not None:
            await self.hold.wait()
        if self.outage:
            raise sqlite3.OperationalError("database is locked")
        if any(entry.pending.quiz.key_id in self.poison for entry in batch):
            raise ValueError("value out of range for the column")
        return [UnlockDecision(UnlockState.UNLOCKED) for _ in batch]


@pytest.mark.parametrize(
    ("score", "criteria"),
    [
        (float("nan"), None),
        (float("inf"), None),
        (1.0, {"specific": float("nan")}),
        (1.0, {"specific": "high"}),
        (1.0, {1: 0.5}),
        (1.0, {"specific": object()}),
        (1.0, ["not", "a", "mapping"]),
    ],
)
def test_values_no_column_should_hold_are_refused_before_the_batch(score: float, criteria: Any) -> None:
    with pytest.raises(InvalidAttempt):
        encode_attempt(pending(score, criteria))


def test_a_sound_attempt_encodes() -> None:
    encoded = encode_attempt(pending(0.5, {"specific": 0.25}))
    assert msgspec.json.decode(encoded.breakdown)[0]["criteria"] == {"specific": 0.25}


@pytest.mark.asyncio
async def test_an_invalid_attempt_is_unavailable_at_once_and_never_joins_a_batch() -> None:
    writer = StandInWriter()
    with pytest.raises(ServiceError) as refused:
        await writer.write(pending(1.0, {"specific": float("nan")}))
    assert refused.value.code is ErrorCode.UNAVAILABLE and refused.value.extra["retryAfter"] == 3
    assert writer.batches == []


@pytest.mark.asyncio
async def test_the_queue_is_bounded_and_a_full_queue_answers_unavailable_at_once() -> None:
    writer = StandInWriter(max_waiting=2)
    writer.hold = asyncio.Event()
    in_flight = asyncio.create_task(writer.write(pending()))
    await asyncio.sleep(0)  # the flusher takes it: it is committing, not waiting
    queued = [asyncio.create_task(writer.write(pending())) for _ in range(2)]
    await asyncio.sleep(0)
    assert writer.waiting == 2
    with pytest.raises(ServiceError) as full:
        await writer.write(pending())
    assert full.value.code is ErrorCode.UNAVAILABLE
    writer.hold.set()
    assert all(d.state is UnlockState.UNLOCKED for d in await asyncio.gather(in_flight, *queued))
    assert writer.batches == [1, 2]


@pytest.mark.asyncio
async def test_one_bad_member_fails_alone_and_the_rest_of_its_batch_commits() -> None:
    writer = StandInWriter()
    writer.hold = asyncio.Event()
    first = asyncio.create_task(writer.write(pending()))
    await asyncio.sleep(0)
    batch = [pending() for _ in range(5)]
    writer.poison.add(batch[2].quiz.key_id)
    waiting = [asyncio.create_task(writer.write(p)) for p in batch]
    await asyncio.sleep(0)
    writer.hold.set()
    results = await asyncio.gather(first, *waiting, return_exceptions=True)
    assert writer.batches == [1, 5, 1, 1, 1, 1, 1]  # the batch of five, then each of them alone
    bad = results[3]
    assert isinstance(bad, ServiceError) and bad.code is ErrorCode.UNAVAILABLE
    assert all(isinstance(r, UnlockDecision) for i, r in enumerate(results) if i != 3)


@pytest.mark.asyncio
async def test_an_outage_fails_the_batch_typed_without_retrying_each_member() -> None:
    writer = StandInWriter()
    writer.outage = True
    writer.hold = asyncio.Event()
    first = asyncio.create_task(writer.write(pending()))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(writer.write(pending())) for _ in range(3)]
    await asyncio.sleep(0)
    writer.hold.set()
    results = await asyncio.gather(first, *waiting, return_exceptions=True)
    assert writer.batches == [1, 3]
    assert all(isinstance(r, ServiceError) and r.code is ErrorCode.UNAVAILABLE for r in results)
    assert all(r.extra["retryAfter"] == 3 for r in results if isinstance(r, ServiceError))
    assert writer.announced == 0  # nothing committed, nothing to publish
