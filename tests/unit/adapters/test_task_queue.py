"""TaskQueue: results and exceptions reach the caller, refusal when full (it is always bounded),
timeouts, jobs skipped when their caller gave up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest
import structlog

from app.adapters.task_queue import QueueFull, TaskQueue
from app.settings import QueueSettings


def blocked(
    gate: asyncio.Event,
    started: asyncio.Event | None = None,
    result: object = "done",
    log: list[str] | None = None,
    name: str = "job",
) -> Callable[[], Awaitable[object]]:
    async def job() -> object:
        if log is not None:
            log.append(name)
        if started is not None:
            started.set()
        await gate.wait()
        return result

    return job


@pytest.mark.asyncio
async def test_results_come_back_to_their_callers() -> None:
    async with TaskQueue(max_size=32, workers=3) as queue:
        assert queue.running

        async def square(n: int) -> int:
            await asyncio.sleep(0)
            return n * n

        results = await asyncio.gather(*(queue.run(lambda n=n: square(n), timeout=1) for n in range(20)))
        assert results == [n * n for n in range(20)]
    assert not queue.running


@pytest.mark.asyncio
async def test_exceptions_propagate_and_the_worker_survives() -> None:
    async with TaskQueue(max_size=4, workers=1) as queue:

        async def boom() -> None:
            raise LookupError("no profile")

        with pytest.raises(LookupError, match="no profile"):
            await queue.run(boom, timeout=1)

        async def fine() -> str:
            return "still working"

        assert await queue.run(fine, timeout=1) == "still working"


@pytest.mark.asyncio
async def test_full_queue_refuses_at_once() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    async with TaskQueue(max_size=2, workers=1) as queue:
        running = asyncio.create_task(queue.run(blocked(gate, started, "first"), timeout=5))
        await started.wait()  # the worker holds job 1; the queue itself is empty
        waiting = [asyncio.create_task(queue.run(blocked(gate, result=i), timeout=5)) for i in (2, 3)]
        await asyncio.sleep(0)
        assert queue.depth == 2
        with pytest.raises(QueueFull):
            await queue.run(blocked(gate), timeout=5)
        gate.set()
        assert await running == "first"
        assert await asyncio.gather(*waiting) == [2, 3]
        assert queue.depth == 0


@pytest.mark.asyncio
async def test_slow_job_times_out_for_its_caller() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    async with TaskQueue(max_size=2, workers=1) as queue:
        with pytest.raises(TimeoutError):
            await queue.run(blocked(gate, started), timeout=0.05)
        assert started.is_set()
        gate.set()

        async def after() -> str:
            return "next"

        assert await queue.run(after, timeout=1) == "next"


@pytest.mark.asyncio
async def test_job_whose_caller_gave_up_is_skipped() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    ran: list[str] = []
    async with TaskQueue(max_size=4, workers=1) as queue:
        first = asyncio.create_task(queue.run(blocked(gate, started, log=ran, name="first"), timeout=5))
        await started.wait()
        with pytest.raises(TimeoutError):
            await queue.run(blocked(gate, log=ran, name="abandoned"), timeout=0.05)
        third = asyncio.create_task(queue.run(blocked(gate, log=ran, name="third", result="third"), timeout=5))
        await asyncio.sleep(0)
        gate.set()
        assert await first == "done"
        assert await third == "third"
        assert ran == ["first", "third"]


@pytest.mark.asyncio
async def test_jobs_run_with_the_callers_log_context() -> None:
    async with TaskQueue(max_size=2, workers=1) as queue:

        async def context() -> dict[str, object]:
            return structlog.contextvars.get_contextvars()

        with structlog.contextvars.bound_contextvars(request_id="req-42"):
            seen = await queue.run(context, timeout=1)
        assert seen.get("request_id") == "req-42"
        assert "request_id" not in await queue.run(context, timeout=1)


@pytest.mark.asyncio
async def test_workers_run_jobs_concurrently() -> None:
    gate = asyncio.Event()
    started = [asyncio.Event() for _ in range(3)]
    async with TaskQueue(max_size=10, workers=3) as queue:
        tasks = [asyncio.create_task(queue.run(blocked(gate, s, result=i), timeout=5)) for i, s in enumerate(started)]
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 1)  # all three started together
        gate.set()
        assert await asyncio.gather(*tasks) == [0, 1, 2]


@pytest.mark.asyncio
async def test_closing_cancels_jobs_still_waiting() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    queue = TaskQueue(max_size=4, workers=1)
    async with queue:
        running = asyncio.create_task(queue.run(blocked(gate, started), timeout=0.3))
        await started.wait()
        waiting = asyncio.create_task(queue.run(blocked(gate), timeout=5))
        await asyncio.sleep(0)
        assert queue.depth == 1
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert queue.depth == 0
    with pytest.raises(asyncio.CancelledError):
        await running


@pytest.mark.asyncio
async def test_closing_releases_callers_of_jobs_in_flight() -> None:
    # Regression: the in-flight job's future was never resolved, so its caller waited out the timeout.
    gate, started = asyncio.Event(), asyncio.Event()
    queue = TaskQueue(max_size=4, workers=1)
    async with queue:
        running = asyncio.create_task(queue.run(blocked(gate, started), timeout=0.3))
        await started.wait()
    with pytest.raises(asyncio.CancelledError):
        await running


@pytest.mark.asyncio
async def test_a_job_that_raises_cancelled_error_does_not_kill_the_worker() -> None:
    # Regression: CancelledError escaped the worker loop and the only worker died.
    async with TaskQueue(max_size=4, workers=1) as queue:

        async def cancelled_inside() -> None:
            raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await queue.run(cancelled_inside, timeout=0.2)
        assert queue.running

        async def fine() -> str:
            return "ok"

        assert await queue.run(fine, timeout=0.2) == "ok"


@pytest.mark.asyncio
async def test_job_whose_caller_was_cancelled_is_skipped() -> None:
    # A client that disconnects cancels its request: its queued job must not run for nobody.
    gate, started = asyncio.Event(), asyncio.Event()
    ran: list[str] = []
    async with TaskQueue(max_size=4, workers=1) as queue:
        first = asyncio.create_task(queue.run(blocked(gate, started, log=ran, name="first"), timeout=5))
        await started.wait()
        gone = asyncio.create_task(queue.run(blocked(gate, log=ran, name="gone"), timeout=5))
        await asyncio.sleep(0)
        assert queue.depth == 1
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        third = asyncio.create_task(queue.run(blocked(gate, log=ran, name="third", result="third"), timeout=5))
        await asyncio.sleep(0)
        gate.set()
        assert await first == "done"
        assert await third == "third"
        assert ran == ["first", "third"]


@pytest.mark.parametrize(("max_size", "workers"), [(0, 1), (1, 0), (-1, 2)])
def test_a_queue_must_be_bounded_and_have_workers(max_size: int, workers: int) -> None:
    # asyncio.Queue(0) means "unbounded": refusing it keeps the queue's bound a real one.
    with pytest.raises(ValueError, match="max_size"):
        TaskQueue(max_size=max_size, workers=workers)


def test_the_queue_setting_cannot_be_unbounded() -> None:
    assert QueueSettings().max_size >= 1
    with pytest.raises(msgspec.ValidationError, match="max_size"):
        msgspec.convert({"max_size": 0}, QueueSettings)
