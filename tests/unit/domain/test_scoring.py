"""summarise: weighted total, pass threshold, consent rule, feedback that never reveals answers."""

from __future__ import annotations

import uuid

import pytest

from app.domain.quiz import GeneratedQuestion, QuestionKind
from app.domain.scoring import QuestionOutcome, ScoringPolicy, summarise

C, K, F = QuestionKind.COMPREHENSION, QuestionKind.CONSENT, QuestionKind.FREE_RESPONSE
WEIGHTS = {"COMPREHENSION": 1.0, "CONSENT": 1.5, "FREE_RESPONSE": 0.5}
POLICY = ScoringPolicy(weights=WEIGHTS, pass_threshold=0.8, question_pass_threshold=0.5)
NAME = "Ada"


def question(
    position: int, kind: QuestionKind, topic: str = "My ideal Sunday", key: str | None = None
) -> GeneratedQuestion:
    answer = key if key is not None else (None if kind is F else f"secret answer {position}")
    return GeneratedQuestion(
        id=uuid.UUID(int=position + 1),
        position=position,
        kind=kind,
        prompt=f"Question {position} about {topic}",
        choices=None if kind is F else [answer, "wrong a", "wrong b"],
        answer_key=answer,
        template_key="t",
        variant=0,
        difficulty=2,
        topic=topic,
    )


def outcome(
    q: GeneratedQuestion,
    score: float,
    *,
    feedback: str | None = None,
    error: str | None = None,
    passed: bool | None = None,
) -> QuestionOutcome:
    return QuestionOutcome(
        question_id=str(q.id),
        kind=q.kind,
        scorer="rule",
        scorer_version="1",
        score=score,
        passed=score >= 0.5 if passed is None else passed,
        feedback=feedback,
        error=error,
    )


def quiz() -> list[GeneratedQuestion]:
    return [
        question(0, C, "My ideal Sunday"),
        question(1, C, "I geek out on"),
        question(2, K, "pace"),
        question(3, K, "photos"),
        question(4, F),
    ]


def run(scores: list[float], policy: ScoringPolicy = POLICY, **kw):
    questions = quiz()
    outcomes = {str(q.id): outcome(q, s, **kw) for q, s in zip(questions, scores, strict=True)}
    return summarise(questions, outcomes, policy, NAME)


def test_all_right_passes_with_full_score_and_no_feedback() -> None:
    verdict = run([1, 1, 1, 1, 1])
    assert verdict.score == 1.0 and verdict.passed
    assert verdict.feedback == []
    assert [o.question_id for o in verdict.breakdown] == [str(q.id) for q in quiz()]


def test_all_wrong_fails_with_zero() -> None:
    verdict = run([0, 0, 0, 0, 0])
    assert verdict.score == 0.0 and not verdict.passed
    assert len(verdict.feedback) == 5


def test_total_is_weight_averaged() -> None:
    # (1*1 + 1*0 + 1.5*1 + 1.5*1 + 0.5*0) / (1 + 1 + 1.5 + 1.5 + 0.5) = 4 / 5.5
    assert run([1, 0, 1, 1, 0]).score == round(4 / 5.5, 4)
    # only free response wrong: 5 / 5.5 = 0.9091 -> passes
    verdict = run([1, 1, 1, 1, 0])
    assert verdict.score == round(5 / 5.5, 4) and verdict.passed


def test_weights_change_the_result() -> None:
    scores = [1, 1, 1, 1, 0]
    heavy_free = ScoringPolicy(
        weights={**WEIGHTS, "FREE_RESPONSE": 10.0}, pass_threshold=0.8, question_pass_threshold=0.5
    )
    verdict = run(scores, heavy_free)
    assert verdict.score == round(5 / 15, 4) and not verdict.passed


def test_missing_weight_defaults_to_one() -> None:
    policy = ScoringPolicy(weights={}, pass_threshold=0.8, question_pass_threshold=0.5)
    assert run([1, 1, 1, 1, 0], policy).score == 0.8


def test_zero_total_weight_scores_zero() -> None:
    policy = ScoringPolicy(
        weights={"COMPREHENSION": 0, "CONSENT": 0, "FREE_RESPONSE": 0},
        pass_threshold=0.0,
        question_pass_threshold=0.5,
        consent_must_all_pass=False,
    )
    verdict = run([1, 1, 1, 1, 1], policy)
    assert verdict.score == 0.0
    assert verdict.passed  # 0.0 >= threshold 0.0


def test_threshold_is_inclusive() -> None:
    policy = ScoringPolicy(weights={}, pass_threshold=0.8, question_pass_threshold=0.5)
    assert run([1, 1, 1, 1, 0], policy).passed  # exactly 0.8
    stricter = ScoringPolicy(weights={}, pass_threshold=0.81, question_pass_threshold=0.5)
    assert not run([1, 1, 1, 1, 0], stricter).passed


def test_partial_scores_count() -> None:
    policy = ScoringPolicy(weights={}, pass_threshold=0.8, question_pass_threshold=0.5)
    assert run([1, 1, 1, 1, 0.25], policy).score == 0.85


def test_a_missed_consent_item_fails_whatever_the_total() -> None:
    policy = ScoringPolicy(weights={"CONSENT": 0.1}, pass_threshold=0.5, question_pass_threshold=0.5)
    verdict = run([1, 1, 1, 0, 1], policy)
    assert verdict.score > 0.95
    assert not verdict.passed
    assert verdict.feedback == ["Look again at Ada's boundaries about photos."]


def test_consent_rule_can_be_switched_off() -> None:
    policy = ScoringPolicy(
        weights={"CONSENT": 0.1}, pass_threshold=0.5, question_pass_threshold=0.5, consent_must_all_pass=False
    )
    verdict = run([1, 1, 1, 0, 1], policy)
    assert verdict.passed and verdict.feedback == []


def test_a_missed_comprehension_item_does_not_trigger_the_consent_rule() -> None:
    policy = ScoringPolicy(weights={}, pass_threshold=0.5, question_pass_threshold=0.5)
    assert run([0, 1, 1, 1, 1], policy).passed


def test_feedback_names_topics_but_never_the_answer_key() -> None:
    questions = quiz()
    verdict = run([0, 0, 0, 0, 0])
    assert verdict.feedback == [
        "Re-read what Ada wrote for “My ideal Sunday”.",
        "Re-read what Ada wrote for “I geek out on”.",
        "Look again at Ada's boundaries about pace.",
        "Look again at Ada's boundaries about photos.",
        "Take another look at your free response.",
    ]
    for text in verdict.feedback:
        for q in questions:
            if q.answer_key:
                assert q.answer_key not in text


def test_scorer_feedback_is_used_when_present() -> None:
    verdict = run(
        [1, 1, 1, 1, 0],
        ScoringPolicy(weights={"FREE_RESPONSE": 10.0}, pass_threshold=0.8, question_pass_threshold=0.5),
        feedback="Write at least 20 characters.",
    )
    assert verdict.feedback == ["Write at least 20 characters."]


def test_identical_hints_are_given_once() -> None:
    questions = [question(0, C, "same"), question(1, C, "same")]
    outcomes = {str(q.id): outcome(q, 0) for q in questions}
    assert summarise(questions, outcomes, POLICY, NAME).feedback == ["Re-read what Ada wrote for “same”."]


def test_scorer_errors_count_as_failures_with_a_generic_hint() -> None:
    questions = quiz()
    outcomes = {str(q.id): outcome(q, 1) for q in questions}
    broken = questions[2]
    outcomes[str(broken.id)] = outcome(broken, 0.0, error="scorer_timeout", passed=False)
    verdict = summarise(questions, outcomes, POLICY, NAME)
    assert not verdict.passed  # a consent item could not be checked: never a pass
    assert verdict.score == round(4 / 5.5, 4)
    assert verdict.feedback == ["One answer could not be checked right now; please try again."]
    assert "pace" not in verdict.feedback[0] and broken.answer_key not in verdict.feedback[0]
    assert verdict.breakdown[2].error == "scorer_timeout"


def test_breakdown_follows_position_not_input_order() -> None:
    questions = quiz()
    outcomes = {str(q.id): outcome(q, 1) for q in questions}
    verdict = summarise(list(reversed(questions)), outcomes, POLICY, NAME)
    assert [o.question_id for o in verdict.breakdown] == [str(q.id) for q in questions]


def test_every_question_needs_an_outcome() -> None:
    questions = quiz()
    outcomes = {str(q.id): outcome(q, 1) for q in questions[:-1]}
    with pytest.raises(KeyError):
        summarise(questions, outcomes, POLICY, NAME)
