"""The conformance suite itself: it passes a well-behaved scorer and fails each kind of broken one.

``TestWellBehavedScorer`` runs the whole suite through pytest (fixtures, factories, the lifecycle,
``describe()``, unavailability and registration through an entry point). The broken scorers call single
checks directly, with the values the fixtures would give, and expect that check to fail.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint
from typing import Any

import numpy as np
import pytest

import plugins.manager
from plugins import hookimpl
from plugins.conformance import KINDS, ScorerConformance, default_hostile_requests, default_sample_requests
from plugins.context import PluginContext
from plugins.manager import SCORERS_GROUP
from plugins.scorer import Scorer, ScoreRequest, ScoreResult, ScorerUnavailableError
from scorers.rule import ChoiceScorer

FAILED = (AssertionError, pytest.fail.Exception)


def _right(request: ScoreRequest) -> bool:
    key = request.answer_key
    return key is not None and " ".join(request.response.casefold().split()) == " ".join(key.casefold().split())


class WellBehaved:
    """Every optional part of the contract, done right: a lifecycle with a background task, describe(),
    CPU work in a thread, unavailability."""

    name = "meta.well_behaved"
    version = "2.1.0-rc.1"
    kinds = KINDS
    deterministic = True

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self._keepalive: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WellBehaved:
        self._keepalive = asyncio.create_task(asyncio.sleep(3600))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._keepalive is not None
        self._keepalive.cancel()
        await asyncio.gather(self._keepalive, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        return {"backend": "fake", "up": self.up, "batch_limit": None}

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        if not self.up:
            raise ScorerUnavailableError("backend down")
        return await asyncio.to_thread(lambda: [self._one(r) for r in batch])

    def _one(self, request: ScoreRequest) -> ScoreResult:
        if request.kind == "FREE_RESPONSE":
            return ScoreResult(request.question_id, min(len(request.response.strip()) / 100, 1.0))
        right = _right(request)
        return ScoreResult(request.question_id, 1.0 if right else 0.0, None if right else "Not quite.")


@hookimpl
def register_scorers(register: Callable[[Scorer], None], context: PluginContext) -> None:
    """This module is also the plugin behind the fake ``meta`` entry point below."""
    assert context.config("meta") == {"api_key": "sk-not-a-real-key"}
    register(WellBehaved())


class TestWellBehavedScorer(ScorerConformance):
    plugin_name = "meta"
    plugin_config = {"api_key": "sk-not-a-real-key"}
    can_be_unavailable = True

    @pytest.fixture(autouse=True)
    def meta_entry_point(self, monkeypatch: pytest.MonkeyPatch) -> None:
        point = EntryPoint(name="meta", value=__name__, group=SCORERS_GROUP)
        monkeypatch.setattr(plugins.manager, "entry_points", lambda group: [point] if group == SCORERS_GROUP else [])

    @pytest.fixture
    def scorer(self) -> Callable[[], Any]:
        async def make() -> WellBehaved:  # an async factory
            return WellBehaved()

        return make

    @pytest.fixture
    def unavailable_scorer(self) -> Any:
        return lambda: WellBehaved(up=False)


async def run_check(check: str, scorer: object, suite: type[ScorerConformance] = ScorerConformance, **values: Any):
    """Call one check of ``suite`` directly, with the values its fixtures would give."""
    defaults = {
        "conformance_scorer": scorer,
        "scorer": scorer,
        "sample_requests": default_sample_requests(),
        "hostile_requests": default_hostile_requests(),
        "unavailable_scorer": None,
        "plugin_context": PluginContext(),
    }
    method = getattr(suite(), check)
    wanted = inspect.signature(method).parameters
    await method(**{name: {**defaults, **values}[name] for name in wanted})


def test_kinds_are_the_services_question_kinds() -> None:
    from app.domain.quiz import QuestionKind

    assert {kind.value for kind in QuestionKind} == KINDS


def test_default_requests_have_unique_ids_and_cover_every_kind() -> None:
    for requests in (default_sample_requests(), default_hostile_requests()):
        ids = [r.question_id for r in requests]
        assert len(ids) == len(set(ids))
        assert {r.kind for r in requests} == KINDS
    assert {r.kind for r in default_sample_requests(["CONSENT"])} == {"CONSENT"}
    long = [r for r in default_hostile_requests(["FREE_RESPONSE"]) if r.question_id == "free_response-long"]
    assert len(long[0].response) == 10_000


class Fixed:
    """A scorer whose results are made by a function of the batch."""

    version = "1.0.0"
    kinds = KINDS
    deterministic = True

    def __init__(self, make: Callable[[Sequence[ScoreRequest]], Any], name: str = "meta.fixed") -> None:
        self.make, self.name = make, name

    async def score(self, batch: Sequence[ScoreRequest]) -> Any:
        return self.make(batch)


def each(score: Callable[[ScoreRequest], Any], **fields: Any) -> Callable[[Sequence[ScoreRequest]], Any]:
    return lambda batch: [ScoreResult(r.question_id, score(r), **fields) for r in batch]


def by_choice(r: ScoreRequest) -> float:
    return 1.0 if _right(r) else 0.0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (each(lambda r: 1.5), r"outside \[0, 1\]"),
        (each(lambda r: -0.1), r"outside \[0, 1\]"),
        (each(lambda r: float("nan")), r"outside \[0, 1\]"),
        (each(lambda r: True), "is bool"),
        (each(lambda r: np.float32(0.5)), "float32"),
        (lambda b: [ScoreResult(r.question_id, 0.5) for r in b][:-1], "no result for"),
        (lambda b: [ScoreResult(r.question_id, 0.5) for r in [*b, b[0]]], "two results"),
        (lambda b: [ScoreResult(f"x{r.question_id}", 0.5) for r in b], "no result for"),
        (lambda b: [*[ScoreResult(r.question_id, 0.5) for r in b], ScoreResult("extra", 0.5)], "not asked"),
        (lambda b: tuple(ScoreResult(r.question_id, 0.5) for r in b), "must return a list"),
        (lambda b: [{"question_id": r.question_id, "score": 0.5} for r in b], "not a ScoreResult"),
        (each(lambda r: 0.5, criteria={"specific": "very"}), "malformed"),
        (lambda b: [ScoreResult(r.question_id, 0.0, f"It was {r.answer_key}") for r in b], "reveals the answer key"),
    ],
)
async def test_invalid_results_fail(make: Callable[[Sequence[ScoreRequest]], Any], message: str) -> None:
    with pytest.raises(FAILED, match=message):
        await run_check("test_results_are_valid_and_in_range", Fixed(make))


@pytest.mark.asyncio
async def test_an_empty_batch_must_not_raise() -> None:
    with pytest.raises(FAILED, match="raised IndexError"):
        await run_check("test_empty_batch_returns_empty_list", Fixed(lambda b: [ScoreResult(b[0].question_id, 1.0)]))


@pytest.mark.asyncio
async def test_order_dependent_scores_fail() -> None:
    by_position = Fixed(lambda b: [ScoreResult(r.question_id, i / len(b)) for i, r in enumerate(b)])
    with pytest.raises(FAILED, match="reversing the batch changes scores"):
        await run_check("test_one_result_per_request_in_any_order", by_position)


@pytest.mark.asyncio
async def test_batch_dependent_scores_fail() -> None:
    by_size = Fixed(lambda b: [ScoreResult(r.question_id, 1 / len(b)) for r in b])
    with pytest.raises(FAILED, match="scoring alone rather than in a batch"):
        await run_check("test_batch_equals_one_by_one", by_size)


@pytest.mark.asyncio
async def test_random_scores_fail_only_when_declared_deterministic() -> None:
    rng = random.Random(1)
    noisy = Fixed(each(lambda r: rng.random()))
    with pytest.raises(FAILED, match="scoring the same batch again"):
        await run_check("test_deterministic_when_declared", noisy)
    noisy.deterministic = False
    await run_check("test_deterministic_when_declared", noisy)
    await run_check("test_one_result_per_request_in_any_order", noisy)
    await run_check("test_batch_equals_one_by_one", noisy)
    await run_check("test_concurrent_calls_are_safe", noisy)


@pytest.mark.asyncio
async def test_raising_on_hostile_input_fails() -> None:
    def picky(r: ScoreRequest) -> float:
        if not r.response.strip():
            raise ValueError("empty answer")
        return 0.5

    with pytest.raises(FAILED, match="raised ValueError"):
        await run_check("test_hostile_input_is_scored_not_raised", Fixed(each(picky)))


@pytest.mark.asyncio
async def test_unavailability_during_normal_checks_fails() -> None:
    def down(batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise ScorerUnavailableError("no endpoint")

    with pytest.raises(FAILED, match="says it is unavailable"):
        await run_check("test_results_are_valid_and_in_range", Fixed(down))


class Slow(Fixed):
    def __init__(self, seconds: float, blocking: bool) -> None:
        super().__init__(each(by_choice))
        self.seconds, self.blocking = seconds, blocking

    async def score(self, batch: Sequence[ScoreRequest]) -> Any:
        if self.blocking:
            time.sleep(self.seconds)  # noqa: ASYNC251 - the fault under test
        else:
            await asyncio.sleep(self.seconds)
        return await super().score(batch)


class TightBudget(ScorerConformance):
    time_budget_seconds = 0.05
    max_loop_block_seconds = 0.02


@pytest.mark.asyncio
async def test_slow_scorers_fail_the_time_budget() -> None:
    with pytest.raises(FAILED, match="took longer than 0.05 s"):
        await run_check("test_large_batch_within_time_budget", Slow(0.2, blocking=False), TightBudget)


@pytest.mark.asyncio
async def test_blocking_the_event_loop_fails() -> None:
    with pytest.raises(FAILED, match="stalled the event loop"):
        await run_check("test_does_not_block_the_event_loop", Slow(0.04, blocking=True), TightBudget)
    await run_check("test_does_not_block_the_event_loop", Slow(0.04, blocking=False), TightBudget)


class SharedState(Fixed):
    """Keeps the batch on the instance across an await: concurrent calls answer each other's questions."""

    def __init__(self) -> None:
        super().__init__(each(by_choice))

    async def score(self, batch: Sequence[ScoreRequest]) -> Any:
        self.batch = batch
        await asyncio.sleep(0)
        return self.make(self.batch)


@pytest.mark.asyncio
async def test_concurrency_bugs_fail() -> None:
    with pytest.raises(FAILED, match="no result for|not asked"):
        await run_check("test_concurrent_calls_are_safe", SharedState())


@pytest.mark.asyncio
async def test_preferring_a_wrong_choice_fails() -> None:
    with pytest.raises(FAILED, match="does not outscore"):
        await run_check("test_prefers_the_answer_key", Fixed(each(lambda r: 1.0 - by_choice(r))))
    with pytest.raises(FAILED, match="does not outscore"):
        await run_check("test_prefers_the_answer_key", Fixed(each(lambda r: 0.5)))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("name", "Rule Choice", "dotted lowercase"),
        ("name", "choice", "dotted lowercase"),
        ("version", "latest", "semver"),
        ("kinds", {"CONSENT"}, "frozenset"),
        ("kinds", frozenset(), "must not be empty"),
        ("kinds", frozenset({"CONSENT", "ESSAY"}), "unknown kinds"),
        ("deterministic", "yes", "True or False"),
        ("score", lambda batch: [], "async def"),
    ],
)
async def test_malformed_attributes_fail(attribute: str, value: Any, message: str) -> None:
    scorer = Fixed(each(by_choice))
    setattr(scorer, attribute, value)
    with pytest.raises(FAILED, match=message):
        await run_check("test_protocol_attributes", scorer)


class HalfManager(Fixed):
    def __init__(self) -> None:
        super().__init__(each(by_choice))

    async def __aenter__(self) -> HalfManager:
        return self


class Swallower(HalfManager):
    async def __aexit__(self, *exc: object) -> bool:
        return True


class Leaker(HalfManager):
    async def __aexit__(self, *exc: object) -> None:
        self.task = asyncio.create_task(asyncio.sleep(3600))

    def cleanup(self) -> None:
        self.task.cancel()


@pytest.mark.asyncio
async def test_lifecycle_faults_fail() -> None:
    with pytest.raises(FAILED, match="needs the other half"):
        await run_check("test_lifecycle", HalfManager())
    with pytest.raises(FAILED, match="DID NOT RAISE"):
        await run_check("test_lifecycle", Swallower())
    leaker = Leaker()
    try:
        with pytest.raises(FAILED, match="tasks still running after __aexit__"):
            await run_check("test_lifecycle", leaker)
    finally:
        leaker.cleanup()


class Describes(Fixed):
    def __init__(self, description: Any) -> None:
        super().__init__(each(by_choice))
        self.description = description

    def describe(self) -> Any:
        return self.description


class LeakySuite(ScorerConformance):
    plugin_config = {"api_key": "sk-live-123456", "model": "small"}


@pytest.mark.asyncio
async def test_describe_faults_fail() -> None:
    with pytest.raises(FAILED, match="not JSON-serialisable"):
        await run_check("test_describe", Describes({"providers": {"CPU"}}))
    with pytest.raises(FAILED, match="must return a mapping"):
        await run_check("test_describe", Describes(["CPU"]))
    with pytest.raises(FAILED, match="keys must be strings"):
        await run_check("test_describe", Describes({1: "one"}))
    with pytest.raises(FAILED, match=r"keys \['version'\] are reserved"):
        await run_check("test_describe", Describes({"version": "9.9.9"}))
    with pytest.raises(FAILED, match=r"repeats secret settings: \['api_key'\]"):
        await run_check("test_describe", Describes({"auth": "Bearer sk-live-123456"}), LeakySuite)
    await run_check("test_describe", Describes({"model": "small"}), LeakySuite)


class MayBeDown(ScorerConformance):
    can_be_unavailable = True


class MayBeDownQuickly(MayBeDown, TightBudget):
    pass


@pytest.mark.asyncio
async def test_unavailability_must_be_the_typed_error() -> None:
    def broken(batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise ConnectionError("refused")

    with pytest.raises(FAILED, match="raised ConnectionError, not ScorerUnavailableError"):
        await run_check(
            "test_unavailable_raises_scorer_unavailable_error", None, MayBeDown, unavailable_scorer=Fixed(broken)
        )
    with pytest.raises(FAILED, match="returned instead of raising"):
        await run_check(
            "test_unavailable_raises_scorer_unavailable_error",
            None,
            MayBeDown,
            unavailable_scorer=Fixed(each(by_choice)),
        )
    with pytest.raises(FAILED, match="did not say so within 0.05 s"):
        await run_check(
            "test_unavailable_raises_scorer_unavailable_error",
            None,
            MayBeDownQuickly,
            unavailable_scorer=Slow(1.0, blocking=False),
        )
    with pytest.raises(FAILED, match="override unavailable_scorer"):
        await run_check("test_unavailable_raises_scorer_unavailable_error", None, MayBeDown)
    with pytest.raises(FAILED, match="set can_be_unavailable"):
        await run_check(
            "test_unavailable_raises_scorer_unavailable_error", None, unavailable_scorer=WellBehaved(up=False)
        )


class RuleSuite(ScorerConformance):
    plugin_name = "rule"


class NoPlugin(ScorerConformance):
    plugin_name = "not-installed"


@pytest.mark.asyncio
async def test_registration_faults_fail() -> None:
    with pytest.raises(FAILED, match="set plugin_name"):
        await run_check("test_registered_by_its_plugin", ChoiceScorer())
    with pytest.raises(FAILED, match="plugins not installed: not-installed"):
        await run_check("test_registered_by_its_plugin", ChoiceScorer(), NoPlugin)
    with pytest.raises(
        FAILED, match=r"registers \['rule.choice', 'rule.free_response', 'rule.overlap'\], not 'meta.fixed'"
    ):
        await run_check("test_registered_by_its_plugin", Fixed(each(by_choice)), RuleSuite)
    await run_check("test_registered_by_its_plugin", ChoiceScorer, RuleSuite)  # a class is a factory
