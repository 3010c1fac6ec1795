"""Keyword-overlap scorer for Connection Key comprehension questions.

``keywords.overlap`` scores an answer by the fraction of the answer key's content words (words of at
least ``min_word_length`` characters that are not stop words) that appear in the answer, ignoring case,
punctuation and Unicode compatibility forms. It suits comprehension questions answered in free text,
where the exact-match ``rule.choice`` scorer is too strict.

Settings, from ``[plugins.config.keywords]`` in ``litestar.toml``::

    [plugins.config.keywords]
    min_word_length = 3           # shorter words never count
    extra_stop_words = ["ada"]    # added to the built-in English list
    # stop_words = ["the", "a"]   # replaces the built-in list
    max_response_chars = 5000     # longer answers are cut (and flagged "truncated")
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import msgspec
from plugins.context import PluginContext
from plugins.hookspecs import hookimpl
from plugins.scorer import Scorer, ScoreRequest, ScoreResult

__all__ = ["KeywordOverlapScorer", "KeywordSettings", "register_scorers"]
__version__ = "0.1.0"

PLUGIN_NAME = "keywords"  # the entry-point name, and the [plugins.config.<name>] table read

DEFAULT_STOP_WORDS = frozenset(
    """a about after all also am an and any are as at be because been but by can could did do does for
    from had has have her his how i if in into is it its just me more most my no not of on or our out
    she so some than that the their them then there these they this those to too up us very was we were
    what when where which who why will with would you your""".split()
)

_WORD = re.compile(r"\w+")


class KeywordSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The plugin's settings table; an unknown key or a wrong type stops start-up."""

    min_word_length: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    stop_words: list[str] | None = None
    extra_stop_words: list[str] = []
    max_response_chars: Annotated[int, msgspec.Meta(ge=1)] = 5000

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KeywordSettings:
        try:  # lax: a value set by environment (CK_PLUGINS__CONFIG__KEYWORDS__MIN_WORD_LENGTH=4) is a string
            return msgspec.convert(dict(config), cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"[plugins.config.{PLUGIN_NAME}]: {exc}") from exc


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


class KeywordOverlapScorer:
    """Fraction of the answer key's content words present in the response."""

    name = "keywords.overlap"
    version = __version__
    kinds = frozenset({"COMPREHENSION"})
    deterministic = True

    def __init__(self, settings: KeywordSettings | None = None) -> None:
        self.settings = settings or KeywordSettings()
        base = DEFAULT_STOP_WORDS if self.settings.stop_words is None else self.settings.stop_words
        self._stop_words = frozenset(_normalise(w) for w in (*base, *self.settings.extra_stop_words))

    def content_words(self, text: str) -> set[str]:
        """The words of ``text`` that count: long enough and not stop words."""
        return {
            word
            for word in _WORD.findall(_normalise(text))
            if len(word) >= self.settings.min_word_length and word not in self._stop_words
        }

    def describe(self) -> dict[str, Any]:
        """Shown in ``/ready``: the settings in effect (nothing secret here)."""
        return {
            "min_word_length": self.settings.min_word_length,
            "stop_words": len(self._stop_words),
            "max_response_chars": self.settings.max_response_chars,
        }

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        # Microseconds per answer (a regex over at most max_response_chars), so it stays on the event
        # loop; anything heavier belongs in asyncio.to_thread.
        return [self._score_one(request) for request in batch]

    def _score_one(self, request: ScoreRequest) -> ScoreResult:
        key = (request.answer_key or "").strip()
        if not key:
            return ScoreResult(request.question_id, 0.0, flags=("no_answer_key",))
        flags: tuple[str, ...] = ()
        response = request.response
        if len(response) > self.settings.max_response_chars:
            response, flags = response[: self.settings.max_response_chars], ("truncated",)
        wanted = self.content_words(key)
        if not wanted:  # a key made only of short or stop words: compare it whole
            same = " ".join(_normalise(response).split()) == " ".join(_normalise(key).split())
            return ScoreResult(request.question_id, 1.0 if same else 0.0, flags=flags)
        found = len(wanted & self.content_words(response))
        score = found / len(wanted)
        feedback = None if found == len(wanted) else "Some details are missing or different."
        return ScoreResult(request.question_id, score, feedback, flags=flags)


@hookimpl
def register_scorers(register: Callable[[Scorer], None], context: PluginContext) -> None:
    """Register ``keywords.overlap`` with the settings from ``[plugins.config.keywords]``."""
    register(KeywordOverlapScorer(KeywordSettings.from_config(context.config(PLUGIN_NAME))))
