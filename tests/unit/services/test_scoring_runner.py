"""ScoringRunner: routing checked at construction; plugin failures become typed outcomes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from app.domain.contract import AnswerInput
from app.domain.experiments import Experiment, ExperimentVariant
from app.domain.quiz import GeneratedQuestion, IssuedQuiz, QuestionKind
from app.services.scoring_runner import ScorerRoutingError, ScoringRunner
from app.settings import ScoringSettings
from plugins.scorer import ScoreRequest, ScoreResult, ScorerUnavailableError
from scorers.rule import ChoiceScorer, FreeResponseRuleScorer

C, K, F = QuestionKind.COMPREHENSION, QuestionKind.CONSENT, QuestionKind.FREE_RESPONSE
NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
SETTINGS = msgspec.structs.replace(
    ScoringSettings(),
    timeout_seconds=0.2,
    routes={"COMPREHENSION": "rule.choice", "CONSENT": "rule.choice", "FREE_RESPONSE": "rule.free_response"},
    fallbacks={},
)
FREE_TEXT = "I would love to hear about your favourite road trip so far."


def question(position: int, kind: QuestionKind, key: str | None) -> GeneratedQuestion:
    return GeneratedQuestion(
        id=uuid.UUID(int=100 + position),
        position=position,
        kind=kind,
        prompt=f"Question {position}?",
        choices=None if key is None else [key, "Something else", "Another thing"],
        answer_key=key,
        template_key="t",
        variant=0,
        difficulty=2,
        topic="topic",
    )


QUESTIONS = [question(0, C, "Baking bread"), question(1, K, "Ask before calling"), question(2, F, None)]
QUIZ = IssuedQuiz(
    key_id=uuid.uuid4(),
    conversation_id=uuid.uuid4(),
    requester_id=uuid.uuid4(),
    target_id=uuid.uuid4(),
    target_name="Ada",
    difficulty=2,
    questions=QUESTIONS,
    signed_payload="v1.x.y.z",
    issued_at=NOW,
    expires_at=NOW + timedelta(minutes=5),
)


def answers(*values: str) -> dict[str, AnswerInput]:
    return {str(q.id): AnswerInput(question_id=q.id, value=v) for q, v in zip(QUESTIONS, values, strict=True)}


RIGHT = answers("baking  BREAD", "Ask before calling", FREE_TEXT)


class FakeScorer:
    """A configurable free-response scorer."""

    version = "9.9"
    kinds = frozenset({"FREE_RESPONSE"})

    def __init__(self, name: str = "fake", behaviour: str = "ok", result: Any = None) -> None:
        self.name = name
        self.behaviour = behaviour
        self.result = result
        self.batches: list[list[ScoreRequest]] = []

    async def score(self, batch: Sequence[ScoreRequest]) -> Any:
        self.batches.append(list(batch))
        if self.behaviour == "raise":
            raise RuntimeError("plugin bug")
        if self.behaviour == "sleep":
            await asyncio.sleep(10)
        if self.behaviour == "return":
            return self.result
        return [ScoreResult(r.question_id, 0.75, "nice") for r in batch]


def runner(free: FakeScorer | FreeResponseRuleScorer | None = None, **settings: Any) -> ScoringRunner:
    free = free or FreeResponseRuleScorer()
    routes = {"COMPREHENSION": "rule.choice", "CONSENT": "rule.choice", "FREE_RESPONSE": free.name}
    config = msgspec.structs.replace(SETTINGS, routes=routes, **settings)
    return ScoringRunner({"rule.choice": ChoiceScorer(), free.name: free}, config)


def test_unknown_scorer_name_is_refused_at_construction() -> None:
    settings = msgspec.structs.replace(SETTINGS, routes={**SETTINGS.routes, "FREE_RESPONSE": "llm.rubric"})
    with pytest.raises(ScorerRoutingError, match="unknown scorer 'llm.rubric'"):
        ScoringRunner({"rule.choice": ChoiceScorer(), "rule.free_response": FreeResponseRuleScorer()}, settings)


def test_scorer_that_cannot_score_the_kind_is_refused() -> None:
    settings = msgspec.structs.replace(SETTINGS, routes={**SETTINGS.routes, "CONSENT": "rule.free_response"})
    with pytest.raises(ScorerRoutingError, match="'rule.free_response' cannot score CONSENT"):
        ScoringRunner({"rule.choice": ChoiceScorer(), "rule.free_response": FreeResponseRuleScorer()}, settings)


def test_a_kind_without_a_route_is_refused() -> None:
    settings = msgspec.structs.replace(SETTINGS, routes={"COMPREHENSION": "rule.choice", "CONSENT": "rule.choice"})
    with pytest.raises(ScorerRoutingError, match="no scorer for FREE_RESPONSE"):
        ScoringRunner({"rule.choice": ChoiceScorer(), "rule.free_response": FreeResponseRuleScorer()}, settings)


@pytest.mark.asyncio
async def test_right_answers_pass_with_the_built_in_scorers() -> None:
    outcomes = (await runner().score(QUIZ, RIGHT, "en")).outcomes
    assert set(outcomes) == {str(q.id) for q in QUESTIONS}
    for q in QUESTIONS:
        o = outcomes[str(q.id)]
        assert (o.question_id, o.kind, o.score, o.passed, o.error) == (str(q.id), q.kind, 1.0, True, None)
    assert outcomes[str(QUESTIONS[0].id)].scorer == "rule.choice"
    assert outcomes[str(QUESTIONS[2].id)].scorer == "rule.free_response"
    assert outcomes[str(QUESTIONS[2].id)].scorer_version == "1.0.0"


@pytest.mark.asyncio
async def test_wrong_answers_fail_and_keep_scorer_feedback() -> None:
    outcomes = (await runner().score(QUIZ, answers("Something else", "Another thing", "short"), None)).outcomes
    assert [outcomes[str(q.id)].score for q in QUESTIONS] == [0.0, 0.0, 0.0]
    assert not any(o.passed for o in outcomes.values())
    assert outcomes[str(QUESTIONS[2].id)].feedback == "Write at least 20 characters."
    assert all(o.error is None for o in outcomes.values())


@pytest.mark.asyncio
async def test_requests_carry_the_question_and_one_batch_goes_to_each_scorer() -> None:
    fake = FakeScorer()
    outcomes = (await runner(fake).score(QUIZ, RIGHT, "de-AT")).outcomes
    [batch] = fake.batches
    [request] = batch
    q = QUESTIONS[2]
    assert request == ScoreRequest(
        question_id=str(q.id),
        kind="FREE_RESPONSE",
        prompt=q.prompt,
        response=FREE_TEXT,
        choices=None,
        answer_key=None,
        topic="topic",
        difficulty=2,
        locale="de-AT",
    )
    o = outcomes[str(q.id)]
    assert (o.score, o.passed, o.feedback, o.scorer, o.scorer_version) == (0.75, True, "nice", "fake", "9.9")


@pytest.mark.asyncio
async def test_question_pass_threshold_applies() -> None:
    outcomes = (await runner(FakeScorer(), question_pass_threshold=0.8).score(QUIZ, RIGHT, None)).outcomes
    assert outcomes[str(QUESTIONS[2].id)].score == 0.75
    assert not outcomes[str(QUESTIONS[2].id)].passed


@pytest.mark.asyncio
async def test_a_scorer_that_raises_fails_only_its_questions() -> None:
    outcomes = (await runner(FakeScorer(behaviour="raise")).score(QUIZ, RIGHT, None)).outcomes
    broken = outcomes[str(QUESTIONS[2].id)]
    assert (broken.error, broken.score, broken.passed, broken.scorer) == ("scorer_error", 0.0, False, "fake")
    assert outcomes[str(QUESTIONS[0].id)].passed and outcomes[str(QUESTIONS[0].id)].error is None


@pytest.mark.asyncio
async def test_a_sync_score_method_is_a_scorer_error() -> None:
    class SyncScorer(FakeScorer):
        def score(self, batch):  # type: ignore[override]
            return [ScoreResult(r.question_id, 1.0) for r in batch]

    outcomes = (await runner(SyncScorer()).score(QUIZ, RIGHT, None)).outcomes
    assert outcomes[str(QUESTIONS[2].id)].error == "scorer_error"


@pytest.mark.asyncio
async def test_a_slow_scorer_times_out_without_holding_up_the_rest() -> None:
    started = time.monotonic()
    outcomes = (await runner(FakeScorer(behaviour="sleep"), timeout_seconds=0.05).score(QUIZ, RIGHT, None)).outcomes
    assert time.monotonic() - started < 2
    slow = outcomes[str(QUESTIONS[2].id)]
    assert (slow.error, slow.score, slow.passed) == ("scorer_timeout", 0.0, False)
    assert outcomes[str(QUESTIONS[1].id)].passed


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "result",
    [
        [],  # nothing for the question
        [ScoreResult("some-other-question", 1.0)],
        [ScoreResult(str(QUESTIONS[2].id), 1.5)],  # out of range (Structs do not check constraints on init)
        [ScoreResult(str(QUESTIONS[2].id), -0.1)],
        [ScoreResult(str(QUESTIONS[2].id), float("nan"))],
        [{"question_id": str(QUESTIONS[2].id), "score": 1.0}],  # not a ScoreResult
    ],
)
async def test_missing_or_invalid_results_are_typed(result: list[Any]) -> None:
    outcomes = (await runner(FakeScorer(behaviour="return", result=result)).score(QUIZ, RIGHT, None)).outcomes
    bad = outcomes[str(QUESTIONS[2].id)]
    assert (bad.error, bad.score, bad.passed) == ("scorer_invalid_result", 0.0, False)
    assert outcomes[str(QUESTIONS[0].id)].passed


@pytest.mark.asyncio
@pytest.mark.parametrize("result", [None, [ScoreResult(str(QUESTIONS[2].id), "1")]])
async def test_a_non_list_or_non_numeric_result_is_typed_not_raised(result: Any) -> None:
    # Regression: these raised TypeError out of ScoringRunner.score and failed the whole request.
    outcomes = (await runner(FakeScorer(behaviour="return", result=result)).score(QUIZ, RIGHT, None)).outcomes
    assert outcomes[str(QUESTIONS[2].id)].error == "scorer_invalid_result"


@pytest.mark.asyncio
async def test_every_question_needs_an_answer() -> None:
    partial = dict(RIGHT)
    del partial[str(QUESTIONS[1].id)]
    with pytest.raises(KeyError):
        await runner().score(QUIZ, partial, None)


@pytest.mark.asyncio
async def test_scorers_run_concurrently() -> None:
    active, peak = 0, 0

    class SlowScorer(FakeScorer):
        async def score(self, batch):  # type: ignore[override]
            nonlocal active, peak
            self.batches.append(list(batch))
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.05)
            active -= 1
            return [ScoreResult(r.question_id, 1.0) for r in batch]

    class SlowChoice(SlowScorer):
        kinds = frozenset({"COMPREHENSION", "CONSENT"})

    slow_choice, slow_free = SlowChoice("slow.choice"), SlowScorer("slow.free")
    settings = msgspec.structs.replace(
        SETTINGS,
        timeout_seconds=1.0,
        routes={"COMPREHENSION": "slow.choice", "CONSENT": "slow.choice", "FREE_RESPONSE": "slow.free"},
    )
    report = await ScoringRunner({"slow.choice": slow_choice, "slow.free": slow_free}, settings).score(
        QUIZ, RIGHT, None
    )
    outcomes = report.outcomes
    assert peak == 2  # both batches in flight at once, not one after the other
    assert [len(b) for b in slow_choice.batches] == [2]  # comprehension and consent share one batch
    assert [len(b) for b in slow_free.batches] == [1]
    assert all(o.passed for o in outcomes.values())


# ----------------------------------------------------------------------------------- fallbacks


class UnavailableScorer(FakeScorer):
    async def score(self, batch: Sequence[ScoreRequest]) -> Any:
        self.batches.append(list(batch))
        raise ScorerUnavailableError("no endpoint configured")


def with_fallback(primary: FakeScorer, fallback: FakeScorer | FreeResponseRuleScorer, **settings: Any) -> ScoringRunner:
    routes = {"COMPREHENSION": "rule.choice", "CONSENT": "rule.choice", "FREE_RESPONSE": primary.name}
    config = msgspec.structs.replace(SETTINGS, routes=routes, fallbacks={"FREE_RESPONSE": fallback.name}, **settings)
    return ScoringRunner({"rule.choice": ChoiceScorer(), primary.name: primary, fallback.name: fallback}, config)


@pytest.mark.parametrize(
    ("primary", "reason"),
    [
        (UnavailableScorer("llm"), "scorer_unavailable"),
        (FakeScorer("llm", behaviour="raise"), "scorer_error"),
        (FakeScorer("llm", behaviour="sleep"), "scorer_timeout"),
        (FakeScorer("llm", behaviour="return", result=[]), "scorer_invalid_result"),
    ],
)
@pytest.mark.asyncio
async def test_a_failed_scorer_falls_back_and_both_are_recorded(primary: FakeScorer, reason: str) -> None:
    report = await with_fallback(primary, FreeResponseRuleScorer(), timeout_seconds=0.05).score(QUIZ, RIGHT, None)
    free = report.outcomes[str(QUESTIONS[2].id)]
    assert (free.scorer, free.fallback_from, free.fallback_reason) == ("rule.free_response", "llm", reason)
    assert (free.score, free.passed, free.error) == (1.0, True, None)
    assert len(primary.batches) == 1
    assert report.outcomes[str(QUESTIONS[0].id)].fallback_from is None  # other kinds untouched


@pytest.mark.asyncio
async def test_a_failing_fallback_is_a_typed_failure_never_a_pass() -> None:
    report = await with_fallback(UnavailableScorer("llm"), FakeScorer("fb", behaviour="raise")).score(QUIZ, RIGHT, None)
    free = report.outcomes[str(QUESTIONS[2].id)]
    assert (free.scorer, free.score, free.passed, free.error) == ("fb", 0.0, False, "scorer_error")
    assert (free.fallback_from, free.fallback_reason) == ("llm", "scorer_unavailable")


@pytest.mark.asyncio
async def test_without_a_fallback_an_unavailable_scorer_fails_its_questions() -> None:
    outcomes = (await runner(UnavailableScorer("llm")).score(QUIZ, RIGHT, None)).outcomes
    free = outcomes[str(QUESTIONS[2].id)]
    assert (free.scorer, free.score, free.passed, free.error) == ("llm", 0.0, False, "scorer_unavailable")


@pytest.mark.asyncio
async def test_only_the_questions_without_a_valid_result_fall_back() -> None:
    two_free = [question(0, F, None), question(1, F, None)]
    quiz = msgspec.structs.replace(QUIZ, questions=two_free)
    partial = FakeScorer("llm", behaviour="return", result=[ScoreResult(str(two_free[0].id), 0.25)])
    fallback = FakeScorer("fb")
    runner_ = with_fallback(partial, fallback)
    answered = {str(q.id): AnswerInput(question_id=q.id, value=FREE_TEXT) for q in two_free}
    outcomes = (await runner_.score(quiz, answered, None)).outcomes
    assert (outcomes[str(two_free[0].id)].scorer, outcomes[str(two_free[0].id)].score) == ("llm", 0.25)
    assert (outcomes[str(two_free[1].id)].scorer, outcomes[str(two_free[1].id)].score) == ("fb", 0.75)
    assert [[r.question_id for r in b] for b in fallback.batches] == [[str(two_free[1].id)]]


def test_fallbacks_are_checked_at_construction() -> None:
    config = msgspec.structs.replace(SETTINGS, fallbacks={"FREE_RESPONSE": "rule.choice"})
    with pytest.raises(ScorerRoutingError, match="scoring.fallbacks.FREE_RESPONSE: scorer 'rule.choice' cannot"):
        ScoringRunner({"rule.choice": ChoiceScorer(), "rule.free_response": FreeResponseRuleScorer()}, config)


# ----------------------------------------------------------------------------------- shadow runs


@pytest.mark.asyncio
async def test_shadow_scorers_are_stored_but_never_decide() -> None:
    shadow_ok, shadow_bad = FakeScorer("shadow.ok"), FakeScorer("shadow.bad", behaviour="raise")
    config = msgspec.structs.replace(SETTINGS, shadow={"FREE_RESPONSE": ["shadow.ok", "shadow.bad"]})
    scorers = {
        "rule.choice": ChoiceScorer(),
        "rule.free_response": FreeResponseRuleScorer(),
        "shadow.ok": shadow_ok,
        "shadow.bad": shadow_bad,
    }
    report = await ScoringRunner(scorers, config).score(QUIZ, RIGHT, None)
    live = report.outcomes[str(QUESTIONS[2].id)]
    assert (live.scorer, live.score) == ("rule.free_response", 1.0)  # the shadow's 0.75 changed nothing
    by_scorer = {o.scorer: o for o in report.shadow}
    assert set(by_scorer) == {"shadow.ok", "shadow.bad"}
    assert (by_scorer["shadow.ok"].score, by_scorer["shadow.ok"].question_id) == (0.75, str(QUESTIONS[2].id))
    assert (by_scorer["shadow.bad"].score, by_scorer["shadow.bad"].error) == (0.0, "scorer_error")
    assert [len(b) for b in shadow_ok.batches] == [1]  # only FREE_RESPONSE answers are shadowed


# ----------------------------------------------------------------------------------- experiments


def experiment_runner(weights: tuple[float, float] = (1.0, 1.0), enabled: bool = True) -> ScoringRunner:
    arms = [
        ExperimentVariant(name="control", scorer="rule.free_response", weight=weights[0]),
        ExperimentVariant(name="fake", scorer="fake", weight=weights[1]),
    ]
    experiment = Experiment(name="free-scorer", kind="FREE_RESPONSE", variants=arms, salt="s1", enabled=enabled)
    config = msgspec.structs.replace(SETTINGS, experiments=[experiment])
    scorers = {"rule.choice": ChoiceScorer(), "rule.free_response": FreeResponseRuleScorer(), "fake": FakeScorer()}
    return ScoringRunner(scorers, config)


@pytest.mark.asyncio
async def test_experiment_assigns_each_requester_a_stable_variant_and_records_it() -> None:
    runner_ = experiment_runner()
    seen = set()
    for n in range(40):
        quiz = msgspec.structs.replace(QUIZ, requester_id=uuid.UUID(int=n + 1))
        first, second = (await runner_.score(quiz, RIGHT, None)), (await runner_.score(quiz, RIGHT, None))
        assert first.variants == second.variants  # deterministic per user
        variant = first.variants["free-scorer"]
        free = first.outcomes[str(QUESTIONS[2].id)]
        assert free.variant == f"free-scorer:{variant}"
        assert free.scorer == {"control": "rule.free_response", "fake": "fake"}[variant]
        assert first.outcomes[str(QUESTIONS[0].id)].variant is None  # other kinds are not in the experiment
        seen.add(variant)
    assert seen == {"control", "fake"}


@pytest.mark.asyncio
async def test_a_disabled_experiment_uses_the_route_and_records_nothing() -> None:
    report = await experiment_runner(enabled=False).score(QUIZ, RIGHT, None)
    assert report.variants == {}
    assert report.outcomes[str(QUESTIONS[2].id)].scorer == "rule.free_response"


def test_in_use_lists_every_reachable_scorer() -> None:
    assert experiment_runner().in_use == {"rule.choice", "rule.free_response", "fake"}
    assert experiment_runner(enabled=False).in_use == {"rule.choice", "rule.free_response"}


def test_experiment_arms_are_checked_at_construction_even_when_disabled() -> None:
    arms = [ExperimentVariant(name="a", scorer="missing")]
    config = msgspec.structs.replace(
        SETTINGS, experiments=[Experiment(name="x", kind="CONSENT", variants=arms, enabled=False)]
    )
    with pytest.raises(ScorerRoutingError, match="scoring.experiments.x.a names unknown scorer 'missing'"):
        ScoringRunner({"rule.choice": ChoiceScorer(), "rule.free_response": FreeResponseRuleScorer()}, config)


@pytest.mark.asyncio
async def test_requests_carry_the_references() -> None:
    fake = FakeScorer()
    with_refs = msgspec.structs.replace(QUESTIONS[2], references=["I hike", "No calls"])
    quiz = msgspec.structs.replace(QUIZ, questions=[QUESTIONS[0], QUESTIONS[1], with_refs])
    await runner(fake).score(quiz, RIGHT, None)
    assert fake.batches[0][0].references == ("I hike", "No calls")
