"""Routes each answer to its scorer plugin and turns plugin failures into typed, logged outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog

from app.domain.contract import AnswerInput
from app.domain.quiz import GeneratedQuestion, IssuedQuiz, QuestionKind
from app.domain.scoring import QuestionOutcome
from app.settings import ScoringSettings
from plugins.scorer import Scorer, ScoreRequest, ScoreResult

__all__ = ["ScorerRoutingError", "ScoringRunner"]

log = structlog.get_logger(__name__)


def _valid_score(score: object) -> bool:
    return isinstance(score, int | float) and not isinstance(score, bool) and 0.0 <= score <= 1.0


class ScorerRoutingError(ValueError):
    """Settings route a question kind to a scorer that is missing or cannot score that kind."""


class ScoringRunner:
    """Scores a quiz's answers: one batch per scorer, all scorers concurrently, each under a timeout."""

    def __init__(self, scorers: Mapping[str, Scorer], settings: ScoringSettings) -> None:
        self._settings = settings
        self._routes: dict[QuestionKind, Scorer] = {}
        for kind in QuestionKind:
            name = settings.routes.get(kind.value)
            if name is None:
                raise ScorerRoutingError(f"scoring.routes has no scorer for {kind.value}")
            scorer = scorers.get(name)
            if scorer is None:
                raise ScorerRoutingError(
                    f"scoring.routes.{kind.value} names unknown scorer {name!r} (have: {sorted(scorers)})"
                )
            if kind.value not in scorer.kinds:
                raise ScorerRoutingError(f"scorer {name!r} cannot score {kind.value}")
            self._routes[kind] = scorer

    def _outcome(self, question: GeneratedQuestion, scorer: Scorer, result: ScoreResult) -> QuestionOutcome:
        score = float(result.score)
        return QuestionOutcome(
            question_id=str(question.id),
            kind=question.kind,
            scorer=scorer.name,
            scorer_version=scorer.version,
            score=score,
            passed=score >= self._settings.question_pass_threshold,
            feedback=result.feedback,
        )

    def _failed(self, question: GeneratedQuestion, scorer: Scorer, error: str) -> QuestionOutcome:
        return QuestionOutcome(
            question_id=str(question.id),
            kind=question.kind,
            scorer=scorer.name,
            scorer_version=scorer.version,
            score=0.0,
            passed=False,
            error=error,
        )

    async def _run(
        self, scorer: Scorer, questions: list[GeneratedQuestion], requests: list[ScoreRequest]
    ) -> list[QuestionOutcome]:
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):  # no extra task, unlike wait_for
                results = await scorer.score(requests)
        except TimeoutError:
            log.warning("scorer timed out", scorer=scorer.name, batch=len(requests))
            return [self._failed(q, scorer, "scorer_timeout") for q in questions]
        except Exception:
            log.exception("scorer raised", scorer=scorer.name, batch=len(requests))
            return [self._failed(q, scorer, "scorer_error") for q in questions]
        # Plugins are untrusted: anything but a list of in-range ScoreResults fails just those questions.
        by_id = {
            r.question_id: r
            for r in (results if isinstance(results, list) else [])
            if isinstance(r, ScoreResult) and _valid_score(r.score)
        }
        outcomes = []
        for question in questions:
            result = by_id.get(str(question.id))
            if result is None:
                log.warning("scorer returned no valid result", scorer=scorer.name, question_id=str(question.id))
                outcomes.append(self._failed(question, scorer, "scorer_invalid_result"))
            else:
                outcomes.append(self._outcome(question, scorer, result))
        return outcomes

    async def score(
        self, quiz: IssuedQuiz, answers: Mapping[str, AnswerInput], locale: str | None
    ) -> dict[str, QuestionOutcome]:
        """Score every question of ``quiz`` (all must have an answer) and return outcomes by question id."""
        groups: dict[str, tuple[Scorer, list[GeneratedQuestion], list[ScoreRequest]]] = {}
        for question in quiz.questions:
            scorer = self._routes[question.kind]
            _, questions, requests = groups.setdefault(scorer.name, (scorer, [], []))
            questions.append(question)
            requests.append(
                ScoreRequest(
                    question_id=str(question.id),
                    kind=question.kind.value,
                    prompt=question.prompt,
                    response=answers[str(question.id)].value,
                    choices=question.choices,
                    answer_key=question.answer_key,
                    topic=question.topic,
                    difficulty=question.difficulty,
                    locale=locale,
                )
            )
        batches = await asyncio.gather(*(self._run(*group) for group in groups.values()))
        return {outcome.question_id: outcome for batch in batches for outcome in batch}
