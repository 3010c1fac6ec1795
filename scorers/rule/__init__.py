"""Rule-based scorers: exact choice matching, a length/copy rule for free responses, and lexical overlap
for free-text comprehension (the cheap fallback when the model scorer is down, :mod:`scorers.rule.overlap`).

Registered through the ``connection_key.scorers`` entry point exactly like a third-party plugin.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

from plugins.hookspecs import hookimpl
from plugins.scorer import Scorer, ScoreRequest, ScoreResult
from scorers.rule.overlap import LexicalOverlapScorer

__all__ = ["ChoiceScorer", "FreeResponseRuleScorer", "LexicalOverlapScorer", "register_scorers"]

MIN_FREE_RESPONSE = 20
MAX_FREE_RESPONSE = 1000
COPY_SIMILARITY = 0.85


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


class ChoiceScorer:
    """Multiple choice: 1.0 when the chosen text is the answer key (ignoring case and spacing), else 0.0."""

    name = "rule.choice"
    version = "1.0.0"
    kinds = frozenset({"COMPREHENSION", "CONSENT"})
    deterministic = True

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        results = []
        for request in batch:
            right = request.answer_key is not None and _normalise(request.response) == _normalise(request.answer_key)
            results.append(ScoreResult(question_id=request.question_id, score=1.0 if right else 0.0))
        return results


class FreeResponseRuleScorer:
    """Free response by rule, with no model: 20 to 1,000 characters, and not a copy of the question."""

    name = "rule.free_response"
    version = "1.0.0"
    kinds = frozenset({"FREE_RESPONSE"})
    deterministic = True

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return [self._score_one(request) for request in batch]

    def _score_one(self, request: ScoreRequest) -> ScoreResult:
        text = request.response.strip()
        if len(text) < MIN_FREE_RESPONSE:
            return ScoreResult(request.question_id, 0.0, f"Write at least {MIN_FREE_RESPONSE} characters.")
        if len(text) > MAX_FREE_RESPONSE:
            return ScoreResult(request.question_id, 0.0, f"Keep it under {MAX_FREE_RESPONSE:,} characters.")
        answer, question = _normalise(text), _normalise(request.prompt)
        matcher = difflib.SequenceMatcher(None, answer, question)
        # quick_ratio bounds ratio from above and is cheap; the full ratio is quadratic.
        if answer in question or (matcher.quick_ratio() >= COPY_SIMILARITY and matcher.ratio() >= COPY_SIMILARITY):
            return ScoreResult(request.question_id, 0.0, "Answer in your own words rather than repeating the question.")
        return ScoreResult(request.question_id, 1.0)


@hookimpl
def register_scorers(register: Callable[[Scorer], None]) -> None:
    """Register the rule scorers (they take no settings)."""
    register(ChoiceScorer())
    register(FreeResponseRuleScorer())
    register(LexicalOverlapScorer())
