"""A cheap lexical-overlap scorer for free-text comprehension: the fallback when the model scorer is down.

It scores how many of the answer key's content words (lower-cased, stop words removed, a crude plural
and ``-ing``/``-ed`` stem) the response contains. Paraphrases share fewer words than the original, so
half of the key's content words already count as a full match; a response that sprays many words to
catch the key is scaled down by how much longer it is than the key. Deterministic, no I/O, microseconds
per answer: it never becomes unavailable itself, which is what a fallback must be.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from plugins.scorer import ScoreRequest, ScoreResult

__all__ = ["LexicalOverlapScorer", "content_words"]

FULL_MARKS_RECALL = 0.5
"""Share of the key's content words that earns a score of 1.0 (paraphrases reuse about half)."""
SPRAY_FACTOR = 4
"""A response may hold this many times the key's content words before its score is scaled down."""

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP_WORDS = frozenset(
    """a about after all also am an and any are as at be been but by can could did do does doing for from
    had has have having he her here him his how i if in into is it its just me more most my no nor not of
    off on once only or other our out over own same she so some such than that the their them then there
    these they this those through to too under until up very was we were what when where which while who
    why will with would you your yours really lot lots thing things""".split()
)


def _stem(word: str) -> str:
    """A crude stem, enough to match "hike", "hikes", "hiking" and "hiked", or "octopus" and "octopuses"."""
    if len(word) <= 3:
        return word
    if word.endswith("ies"):
        word = word[:-3] + "y"
    elif word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    elif word.endswith("ing") and len(word) >= 6:
        word = word[:-3]
    elif word.endswith("ed") and len(word) >= 5:
        word = word[:-2]
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def content_words(text: str) -> set[str]:
    """The stemmed content words of ``text`` (case and punctuation ignored, stop words dropped)."""
    return {_stem(w) for w in _WORD.findall(text.casefold()) if w not in _STOP_WORDS}


class LexicalOverlapScorer:
    """Comprehension answered in free text, scored by shared content words with the person's own answer."""

    name = "rule.overlap"
    version = "1.0.0"
    kinds = frozenset({"COMPREHENSION"})
    deterministic = True

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return [ScoreResult(request.question_id, self._score(request)) for request in batch]

    @staticmethod
    def _score(request: ScoreRequest) -> float:
        if not request.answer_key:
            return 0.0
        key, response = content_words(request.answer_key), content_words(request.response)
        if not key or not response:
            return 0.0
        recall = len(key & response) / len(key)
        spray = max(1.0, len(response) / (SPRAY_FACTOR * len(key)))
        return round(min(1.0, recall / FULL_MARKS_RECALL) / spray, 4)
