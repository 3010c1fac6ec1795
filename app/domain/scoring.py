"""Per-question results -> weighted total, pass/fail and feedback that helps without revealing answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from msgspec import Struct

from app.domain.quiz import GeneratedQuestion, QuestionKind

__all__ = ["QuestionOutcome", "ScoringPolicy", "Verdict", "summarise"]


class QuestionOutcome(Struct, frozen=True, omit_defaults=True):
    """How one question was scored, by which scorer (name and version).

    ``error`` is set when the scorer failed and nothing replaced it (the score is then 0). When the
    routed scorer failed and the kind's fallback scored instead, ``scorer`` names the fallback and
    ``fallback_from`` / ``fallback_reason`` say what failed and why. ``variant`` names the experiment
    arm (``experiment:variant``) that chose the scorer. ``criteria`` and ``flags`` come from the scorer.
    """

    question_id: str
    kind: QuestionKind
    scorer: str
    scorer_version: str
    score: float
    passed: bool
    feedback: str | None = None
    error: str | None = None
    criteria: dict[str, float] | None = None
    flags: tuple[str, ...] = ()
    fallback_from: str | None = None
    fallback_reason: str | None = None
    variant: str | None = None


class ScoringPolicy(Struct, frozen=True):
    """Weights and thresholds, from settings."""

    weights: Mapping[str, float]
    pass_threshold: float
    question_pass_threshold: float
    consent_must_all_pass: bool = True


class Verdict(Struct, frozen=True):
    """The decision on an attempt."""

    score: float
    passed: bool
    breakdown: list[QuestionOutcome]
    feedback: list[str]


def _hint(question: GeneratedQuestion, outcome: QuestionOutcome, name: str) -> str:
    if outcome.error is not None:
        return "One answer could not be checked right now; please try again."
    if outcome.feedback:
        return outcome.feedback
    if question.kind is QuestionKind.COMPREHENSION:
        return f"Re-read what {name} wrote for “{question.topic}”."
    if question.kind is QuestionKind.CONSENT:
        return f"Look again at {name}'s boundaries about {question.topic}."
    return "Take another look at your free response."


def summarise(
    questions: Sequence[GeneratedQuestion],
    outcomes: Mapping[str, QuestionOutcome],
    policy: ScoringPolicy,
    target_name: str,
) -> Verdict:
    """Combine per-question outcomes into a verdict.

    The total is the weight-averaged score. The attempt passes when the total reaches the threshold and,
    if ``consent_must_all_pass``, every consent item passed: knowing someone's boundaries is not
    something a high comprehension score can make up for.
    """
    weighted = total_weight = 0.0
    breakdown: list[QuestionOutcome] = []
    feedback: list[str] = []
    consent_ok = True
    for question in sorted(questions, key=lambda q: q.position):
        outcome = outcomes[str(question.id)]
        weight = policy.weights.get(question.kind.value, 1.0)
        weighted += weight * outcome.score
        total_weight += weight
        breakdown.append(outcome)
        if not outcome.passed:
            if question.kind is QuestionKind.CONSENT:
                consent_ok = False
            hint = _hint(question, outcome, target_name)
            if hint not in feedback:
                feedback.append(hint)
    score = round(weighted / total_weight, 4) if total_weight else 0.0
    passed = score >= policy.pass_threshold and (consent_ok or not policy.consent_must_all_pass)
    if passed:
        feedback = []
    return Verdict(score=score, passed=passed, breakdown=breakdown, feedback=feedback)
