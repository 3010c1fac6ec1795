"""The embedding scorers: comprehension by meaning, and a model-only rubric for free responses.

* ``embedding.similarity`` (COMPREHENSION): the answer against what the person wrote, cosine of the
  sentence embeddings blended with lexical evidence (:mod:`scorers.embedding.answer_match`), mapped to
  [0, 1] by a per-difficulty ramp.
* ``embedding.cosine`` (COMPREHENSION): plain cosine through the same ramps; kept as the baseline arm
  for A/B tests and shadow runs.
* ``embedding.rubric`` (FREE_RESPONSE): the fallback when no LLM can grade: genuine (long enough, not
  a copy of the question or the person's texts, not a stock opener), specific (close in meaning to
  something the person wrote), and the prompt-injection guard shared with the LLM rubric.

Profile-side texts (answer keys, the person's texts, stock openers) are embedded with the cache on:
they recur across every quiz about that person. Answers are not cached: each is typed once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from plugins.scorer import ScoreRequest, ScoreResult, ScorerUnavailableError
from scorers.embedding.answer_match import MatchParams, match_score, ramp
from scorers.embedding.backend import EmbeddingBackend, EmbeddingUnavailableError
from scorers.embedding.config import EmbeddingConfig
from scorers.embedding.service import ServiceClosedError
from scorers.llm_rubric.injection import detect_injection

__all__ = ["CosineScorer", "RubricScorer", "SimilarityScorer"]

VERSION = "1.0.0"
EMPTY_FEEDBACK = "Write a few words in your own words."
# Stock openers: an answer this close to one of them says nothing about the person.
GENERIC_OPENERS = (
    "Hey, how are you?",
    "Hi there, you seem nice.",
    "I like your profile, want to chat?",
    "You are really attractive.",
    "Hello! What are you up to?",
    "We have a lot in common, let's talk.",
)


class _EmbeddingScorer:
    """Shared lifecycle: entering a scorer opens the shared backend (the first one loads the model)."""

    name: str
    version = VERSION
    kinds: frozenset[str]
    deterministic = True

    def __init__(self, backend: EmbeddingBackend, config: EmbeddingConfig) -> None:
        self._backend = backend
        self._config = config

    async def __aenter__(self) -> _EmbeddingScorer:
        await self._backend.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._backend.close()

    def describe(self) -> dict[str, object]:
        """The model behind this scorer (provider, variant, batching statistics)."""
        return self._backend.describe()

    async def _embed(self, texts: list[str], *, cache: bool) -> np.ndarray:
        try:
            return await self._backend.embed(texts, cache=cache)
        except (EmbeddingUnavailableError, ServiceClosedError) as exc:
            raise ScorerUnavailableError(str(exc)) from exc

    def _flags(self, text: str) -> tuple[str, ...]:
        return ("truncated",) if self._backend.truncated(text) else ()


class SimilarityScorer(_EmbeddingScorer):
    """Comprehension answers scored by meaning against the answer key."""

    name = "embedding.similarity"
    kinds = frozenset({"COMPREHENSION"})
    blend = True

    def __init__(self, backend: EmbeddingBackend, config: EmbeddingConfig) -> None:
        super().__init__(backend, config)
        params = MatchParams()
        if config.thresholds is not None:  # MatchParams re-validates the merged ramps
            params = MatchParams(
                lexical_weight=params.lexical_weight,
                question_word_weight=params.question_word_weight,
                thresholds={**params.thresholds, **config.thresholds},
            )
        self._params = params

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        results: dict[str, ScoreResult] = {}
        todo = []
        for request in batch:
            if not request.response.strip() or not request.answer_key:
                # An empty answer knows nothing; a question without a key cannot be passed by meaning.
                results[request.question_id] = ScoreResult(request.question_id, 0.0, EMPTY_FEEDBACK)
            else:
                todo.append(request)
        if todo:
            answers = await self._embed([r.response for r in todo], cache=False)
            keys = await self._embed([r.answer_key or "" for r in todo], cache=True)
            cosines = np.einsum("ij,ij->i", answers, keys)
            for request, cosine in zip(todo, cosines, strict=True):
                if self.blend:
                    value = match_score(
                        float(cosine),
                        request.response,
                        request.answer_key or "",
                        request.topic,  # the prompt the person answered: its words are demoted
                        difficulty=request.difficulty,
                        params=self._params,
                    )
                else:
                    value = ramp(float(cosine), *self._params.ramp_for(request.difficulty))
                results[request.question_id] = ScoreResult(
                    request.question_id,
                    value,
                    criteria={"cosine": round(float(cosine), 4)},
                    flags=self._flags(request.response),
                )
        return [results[r.question_id] for r in batch]


class CosineScorer(SimilarityScorer):
    """Comprehension by plain cosine through the same ramps: the A/B and shadow baseline."""

    name = "embedding.cosine"
    blend = False


class RubricScorer(_EmbeddingScorer):
    """A free response judged with the embedding model only (see the module docstring)."""

    name = "embedding.rubric"
    kinds = frozenset({"FREE_RESPONSE"})

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        rubric = self._config.rubric
        results: dict[str, ScoreResult] = {}
        todo: list[ScoreRequest] = []
        for request in batch:
            text = request.response.strip()
            if len(text) < rubric.min_chars:
                results[request.question_id] = ScoreResult(
                    request.question_id, 0.0, f"Write at least {rubric.min_chars} characters."
                )
            elif len(text) > rubric.max_chars:
                results[request.question_id] = ScoreResult(
                    request.question_id, 0.0, f"Keep it under {rubric.max_chars:,} characters."
                )
            elif detect_injection(text):
                # Whatever the similarity says, an answer that tries to instruct the grader gets nothing.
                results[request.question_id] = ScoreResult(
                    request.question_id,
                    0.0,
                    "Answer the question itself.",
                    criteria={"genuine": 0.0, "specific": 0.0},
                    flags=("prompt_injection",),
                )
            else:
                todo.append(request)
        if todo:
            answers = await self._embed([r.response for r in todo], cache=False)
            generic = await self._embed(list(GENERIC_OPENERS), cache=True)
            for request, answer in zip(todo, answers, strict=True):
                results[request.question_id] = await self._judge(request, answer, generic)
        return [results[r.question_id] for r in batch]

    async def _judge(self, request: ScoreRequest, answer: np.ndarray, generic: np.ndarray) -> ScoreResult:
        rubric = self._config.rubric
        own = [t for t in (request.topic, *request.references) if t]
        copied_from = [request.prompt, *request.references]
        vectors = await self._embed([*copied_from, *own], cache=True)
        copy = float(np.max(vectors[: len(copied_from)] @ answer))
        closeness = float(np.max(vectors[len(copied_from) :] @ answer)) if own else 0.0
        generic_cos = float(np.max(generic @ answer))
        zero, full = rubric.specific_ramp
        specific = float(np.clip((closeness - zero) / (full - zero), 0.0, 1.0))
        genuine = 0.0 if copy >= rubric.copy_similarity or generic_cos >= rubric.generic_similarity else 1.0
        criteria = {"genuine": genuine, "specific": round(specific, 4)}
        if not genuine:
            feedback = (
                "Answer in your own words rather than repeating the question or their profile."
                if copy >= rubric.copy_similarity
                else "Say something about them in particular, not a general opener."
            )
            return ScoreResult(
                request.question_id, 0.0, feedback, criteria=criteria, flags=self._flags(request.response)
            )
        feedback = None if specific >= 0.5 else "Make it about something they wrote."
        return ScoreResult(
            request.question_id, round(specific, 4), feedback, criteria=criteria, flags=self._flags(request.response)
        )
