"""Fixtures for the LLM rubric scorer: the fake chat-completions server (``tests/fake_chat_server.py``),
a fake clock and sleep, and scorer factories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scorers.llm_rubric.config import LlmRubricConfig, load_config
from scorers.llm_rubric.rubric import PROJECT_ROOT, Rubric, load_rubric
from scorers.llm_rubric.scorer import LlmRubricScorer
from tests.fake_chat_server import FakeChatServer, Recorded, Step, grade_by_rules, llm_server

__all__ = ["FakeChatServer", "Recorded", "Step", "grade_by_rules", "llm_server"]

RUBRIC_PATH = PROJECT_ROOT / "templates" / "rubrics" / "free_response.toml"


@pytest.fixture(scope="session")
def rubric() -> Rubric:
    return load_rubric(RUBRIC_PATH)


class FakeClock:
    """Monotonic seconds moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    """Records the waits between retries instead of sleeping them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


FAST = {
    "timeout_seconds": 2.0,
    "max_retries": 2,
    "backoff_base_seconds": 0.001,
    "max_backoff_seconds": 5.0,
    "breaker_failure_threshold": 50,
    "breaker_reset_seconds": 30.0,
}


@pytest.fixture
def make_scorer(
    llm_server: FakeChatServer, rubric: Rubric, clock: FakeClock, sleeps: RecordingSleep
) -> Callable[..., LlmRubricScorer]:
    """Build a scorer pointed at ``llm_server``; keyword arguments override settings."""

    def build(**settings: Any) -> LlmRubricScorer:
        raw = {"base_url": llm_server.base_url, **FAST, **settings}
        config: LlmRubricConfig = load_config(raw, environ={})
        return LlmRubricScorer(config, rubric, clock=clock, sleep=sleeps)

    return build


@pytest.fixture
def rubric_path() -> Path:
    return RUBRIC_PATH
