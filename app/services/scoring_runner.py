"""Routes each answer to its scorer plugin (or its experiment variant's), falls back when a scorer is
unavailable, runs shadow scorers beside the live ones, and turns plugin failures into typed, logged
outcomes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence

import structlog
from msgspec import Struct

from app.domain.contract import AnswerInput
from app.domain.experiments import Experiment, assign_variant
from app.domain.quiz import GeneratedQuestion, IssuedQuiz, QuestionKind
from app.domain.scoring import QuestionOutcome
from app.settings import ScoringSettings
from plugins.scorer import Scorer, ScoreRequest, ScoreResult, ScorerUnavailableError

__all__ = ["ScorerRoutingError", "ScoringReport", "ScoringRunner"]

log = structlog.get_logger(__name__)

# Typed reasons a scorer produced no score for a question, stored on the outcome.
UNAVAILABLE, TIMEOUT, ERROR, INVALID = "scorer_unavailable", "scorer_timeout", "scorer_error", "scorer_invalid_result"


def _valid_score(score: object) -> bool:
    return isinstance(score, int | float) and not isinstance(score, bool) and 0.0 <= score <= 1.0


class ScorerRoutingError(ValueError):
    """Settings name a scorer that is missing or cannot score the kind it is given."""


class ScoringReport(Struct, frozen=True):
    """What scoring one quiz produced: live outcomes by question id (these decide), shadow outcomes
    (stored for comparison only) and the experiment variants the requester was assigned to."""

    outcomes: dict[str, QuestionOutcome]
    shadow: list[QuestionOutcome]
    variants: dict[str, str]

    @property
    def unscored(self) -> list[QuestionOutcome]:
        """Live outcomes that neither the scorer nor its fallback produced. Such an attempt must not be
        recorded: scoring it 0 would make our outage the user's failure."""
        return [o for o in self.outcomes.values() if o.error is not None]


def _request(question: GeneratedQuestion, answer: str, locale: str | None) -> ScoreRequest:
    return ScoreRequest(
        question_id=str(question.id),
        kind=question.kind.value,
        prompt=question.prompt,
        response=answer,
        choices=question.choices,
        answer_key=question.answer_key,
        topic=question.topic,
        difficulty=question.difficulty,
        locale=locale,
        references=tuple(question.references or ()),
    )


class ScoringRunner:
    """Scores a quiz's answers: one batch per scorer, all scorers (live and shadow) concurrently, each
    under ``scoring.timeout_seconds``. A fallback, when the live scorer failed, gets its own timeout."""

    def __init__(self, scorers: Mapping[str, Scorer], settings: ScoringSettings) -> None:
        self._settings = settings

        def resolve(name: str, kind: str, where: str) -> Scorer:
            scorer = scorers.get(name)
            if scorer is None:
                raise ScorerRoutingError(f"{where} names unknown scorer {name!r} (have: {sorted(scorers)})")
            if kind not in scorer.kinds:
                raise ScorerRoutingError(f"{where}: scorer {name!r} cannot score {kind}")
            return scorer

        self._routes: dict[QuestionKind, Scorer] = {}
        self._fallbacks: dict[QuestionKind, Scorer] = {}
        self._shadow: dict[QuestionKind, list[Scorer]] = {}
        self._experiments: dict[QuestionKind, tuple[Experiment, dict[str, Scorer]]] = {}
        for kind in QuestionKind:
            name = settings.routes.get(kind.value)
            if name is None:
                raise ScorerRoutingError(f"scoring.routes has no scorer for {kind.value}")
            self._routes[kind] = resolve(name, kind.value, f"scoring.routes.{kind.value}")
            if (fallback := settings.fallbacks.get(kind.value)) is not None:
                self._fallbacks[kind] = resolve(fallback, kind.value, f"scoring.fallbacks.{kind.value}")
            self._shadow[kind] = [
                resolve(n, kind.value, f"scoring.shadow.{kind.value}") for n in settings.shadow.get(kind.value, [])
            ]
        for experiment in settings.experiments:
            arms = {
                v.name: resolve(v.scorer, experiment.kind, f"scoring.experiments.{experiment.name}.{v.name}")
                for v in experiment.variants
            }
            if experiment.enabled:
                self._experiments[QuestionKind(experiment.kind)] = (experiment, arms)

    @property
    def in_use(self) -> set[str]:
        """Names of every scorer a submission can reach: routes, fallbacks, shadows, experiment arms."""
        names = {s.name for s in self._routes.values()} | {s.name for s in self._fallbacks.values()}
        names |= {s.name for group in self._shadow.values() for s in group}
        names |= {s.name for _, arms in self._experiments.values() for s in arms.values()}
        return names

    def scorers_for(self, kind: QuestionKind, requester_id: uuid.UUID) -> tuple[Scorer, str | None]:
        """The live scorer for ``kind`` and this requester, with the ``experiment:variant`` label when an
        experiment chose it."""
        if kind in self._experiments:
            experiment, arms = self._experiments[kind]
            variant = assign_variant(experiment, requester_id)
            return arms[variant.name], f"{experiment.name}:{variant.name}"
        return self._routes[kind], None

    async def _call(
        self, scorer: Scorer, requests: Sequence[ScoreRequest]
    ) -> tuple[dict[str, ScoreResult], str | None]:
        """Run one batch; returns the valid results by question id and, when the whole call failed, why."""
        try:
            async with asyncio.timeout(self._settings.timeout_seconds):  # no extra task, unlike wait_for
                results = await scorer.score(list(requests))
        except TimeoutError:
            log.warning("scorer timed out", scorer=scorer.name, batch=len(requests))
            return {}, TIMEOUT
        except ScorerUnavailableError as exc:
            log.warning("scorer unavailable", scorer=scorer.name, batch=len(requests), reason=str(exc))
            return {}, UNAVAILABLE
        except Exception:
            log.exception("scorer raised", scorer=scorer.name, batch=len(requests))
            return {}, ERROR
        # Plugins are untrusted: anything but a list of in-range ScoreResults fails just those questions.
        wanted = {r.question_id for r in requests}
        valid = {
            r.question_id: r
            for r in (results if isinstance(results, list) else [])
            if isinstance(r, ScoreResult) and _valid_score(r.score) and r.question_id in wanted
        }
        if len(valid) < len(wanted):
            log.warning("scorer returned no valid result", scorer=scorer.name, missing=len(wanted) - len(valid))
        return valid, None

    def _outcome(
        self, question: GeneratedQuestion, scorer: Scorer, result: ScoreResult, **extra: str | None
    ) -> QuestionOutcome:
        score = float(result.score)
        return QuestionOutcome(
            question_id=str(question.id),
            kind=question.kind,
            scorer=scorer.name,
            scorer_version=scorer.version,
            score=score,
            passed=score >= self._settings.question_pass_threshold,
            feedback=result.feedback,
            criteria=dict(result.criteria) if result.criteria else None,
            flags=tuple(result.flags),
            **extra,
        )

    @staticmethod
    def _failed(question: GeneratedQuestion, scorer: Scorer, error: str, **extra: str | None) -> QuestionOutcome:
        return QuestionOutcome(
            question_id=str(question.id),
            kind=question.kind,
            scorer=scorer.name,
            scorer_version=scorer.version,
            score=0.0,
            passed=False,
            error=error,
            **extra,
        )

    async def _live(
        self, scorer: Scorer, variant: str | None, questions: list[GeneratedQuestion], requests: list[ScoreRequest]
    ) -> list[QuestionOutcome]:
        results, failure = await self._call(scorer, requests)
        outcomes: dict[str, QuestionOutcome] = {}
        retry: list[tuple[GeneratedQuestion, ScoreRequest, str]] = []
        for question, request in zip(questions, requests, strict=True):
            result = results.get(request.question_id)
            if result is not None:
                outcomes[request.question_id] = self._outcome(question, scorer, result, variant=variant)
            else:
                retry.append((question, request, failure or INVALID))
        by_fallback: dict[str, tuple[Scorer, list[tuple[GeneratedQuestion, ScoreRequest, str]]]] = {}
        for item in retry:
            fallback = self._fallbacks.get(item[0].kind)
            if fallback is None or fallback is scorer:
                outcomes[item[1].question_id] = self._failed(item[0], scorer, item[2], variant=variant)
            else:
                by_fallback.setdefault(fallback.name, (fallback, []))[1].append(item)
        for fallback, items in by_fallback.values():
            fallback_results, fallback_failure = await self._call(fallback, [request for _, request, _ in items])
            for question, request, reason in items:
                extra = {"fallback_from": scorer.name, "fallback_reason": reason, "variant": variant}
                result = fallback_results.get(request.question_id)
                if result is None:
                    outcomes[request.question_id] = self._failed(
                        question, fallback, fallback_failure or INVALID, **extra
                    )
                else:
                    outcomes[request.question_id] = self._outcome(question, fallback, result, **extra)
        return [outcomes[r.question_id] for r in requests]

    async def _shadow_run(
        self, scorer: Scorer, questions: list[GeneratedQuestion], requests: list[ScoreRequest]
    ) -> list[QuestionOutcome]:
        results, failure = await self._call(scorer, requests)
        return [
            self._outcome(q, scorer, results[r.question_id])
            if r.question_id in results
            else self._failed(q, scorer, failure or INVALID)
            for q, r in zip(questions, requests, strict=True)
        ]

    async def score(self, quiz: IssuedQuiz, answers: Mapping[str, AnswerInput], locale: str | None) -> ScoringReport:
        """Score every question of ``quiz`` (all must have an answer)."""
        live: dict[tuple[str, str | None], tuple[Scorer, str | None, list[GeneratedQuestion], list[ScoreRequest]]] = {}
        shadow: dict[str, tuple[Scorer, list[GeneratedQuestion], list[ScoreRequest]]] = {}
        variants: dict[str, str] = {}
        for question in quiz.questions:
            request = _request(question, answers[str(question.id)].value, locale)
            scorer, variant = self.scorers_for(question.kind, quiz.requester_id)
            if variant is not None:
                experiment, arm = variant.split(":", 1)
                variants[experiment] = arm
            group = live.setdefault((scorer.name, variant), (scorer, variant, [], []))
            group[2].append(question)
            group[3].append(request)
            for shadow_scorer in self._shadow[question.kind]:
                shadow_group = shadow.setdefault(shadow_scorer.name, (shadow_scorer, [], []))
                shadow_group[1].append(question)
                shadow_group[2].append(request)
        runs = [self._live(*group) for group in live.values()]
        runs += [self._shadow_run(*group) for group in shadow.values()]
        batches = await asyncio.gather(*runs)
        live_batches, shadow_batches = batches[: len(live)], batches[len(live) :]
        return ScoringReport(
            outcomes={o.question_id: o for batch in live_batches for o in batch},
            shadow=[o for batch in shadow_batches for o in batch],
            variants=variants,
        )
