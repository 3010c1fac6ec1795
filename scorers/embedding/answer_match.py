"""Score a free-text quiz answer against the reference answer: pure maths, no model.

The comprehension scorer asks "what did Bob say when asked ...?" and compares the user's answer (the
*response*) with what Bob actually wrote (the *reference*). It embeds both with the sentence encoder and
hands the cosine similarity to :func:`match_score`, together with the raw texts. This module turns that
into a score in ``[0, 1]``:

1. **Lexical recall with question demoting** (:func:`match_features`). The share of the reference's
   content words that the response contains, after lower-casing, dropping stop words and a light
   stemmer. Words that also occur in the *question* are down-weighted (``question_word_weight``):
   repeating the question's words ("my ideal Sunday is ...") shows no knowledge of the reference, while
   the words only the reference has ("brunch", "hiking") are exactly what the quiz asks about.
2. **Blend**: ``similarity = (1 - lexical_weight) * cosine + lexical_weight * recall``. The embedding
   catches paraphrases and synonyms, the recall catches the specific facts (names, places, numbers) that
   a sentence embedding blurs; each covers the other's blind spot.
3. **Per-difficulty ramp**: ``thresholds[difficulty] = (zero_at, one_at)``; the score is 0 at or below
   ``zero_at``, 1 at or above ``one_at``, linear in between. Harder questions need a closer answer.

An empty (or whitespace-only) response scores 0 whatever the cosine says: the encoder still returns a
vector for the empty string, and its cosine with a short reference is not zero.

Known limits of the lexical half (the cosine half softens both): it is a bag of words, so negation is
invisible ("doesn't like dogs" vs "likes dogs"); and for an either/or question ("Cats or dogs?") the right
answer's word is a question word and is demoted, so a one-word right answer relies on the cosine alone.

The defaults were chosen on the Mohler et al. (2011) short-answer grading set (2,442 graded answers),
measured with ``python -m scorers.embedding.asag_eval`` (Pearson of the score with the graders' average;
the paper's best system reached 0.518). That data is used for evaluation only and none of it is part of
this project. fp32 model, all answers, in-sample / leave-one-assignment-out cross-validated:

=====================================================  =========  ======
step                                                   in-sample  CV
=====================================================  =========  ======
cosine only                                            0.464      -
cosine + recall, no question demoting (w)              0.531      0.527
cosine + recall with question demoting (w, q)          0.541      0.535
... + difficulty-2 ramp (w, q, zero_at, one_at)        0.576      0.570
defaults (0.5, 0.1, ramp 0.10-0.60)                    0.575      -
=====================================================  =========  ======

The int8 model is within 0.004 of these. Cross-validated fits land on the same round values in every fold
(w 0.5-0.6, q 0.05-0.1, ramp 0.10-0.55/0.60), so the four parameters are not overfit.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata

import msgspec

__all__ = [
    "DEFAULT_LEXICAL_WEIGHT",
    "DEFAULT_QUESTION_WORD_WEIGHT",
    "DEFAULT_THRESHOLDS",
    "STOP_WORDS",
    "MatchFeatures",
    "MatchParams",
    "blended_similarity",
    "match_features",
    "match_score",
    "ramp",
    "stem",
    "terms",
]

# Weight of the lexical recall in the blend with the cosine: an equal blend. On Mohler the best weight
# with the default ramp is 0.5-0.6 (cross-validated fits: 0.5-0.6), and the blend alone peaks at 0.45;
# 0.5 sits in that flat optimum and keeps the embedding, which is what handles paraphrases, at half.
DEFAULT_LEXICAL_WEIGHT = 0.5
# Weight of a reference word that also appears in the question, relative to a word only the reference has.
# Anything in 0.05-0.3 is equally good on Mohler; 0 is clearly worse (when every reference word is a
# question word, "Is Bob a morning person?" - "A morning person.", recall would be undefined), so a small
# weight keeps recall defined and smooth without a special case.
DEFAULT_QUESTION_WORD_WEIGHT = 0.1
# Blended similarity (zero_at, one_at) per difficulty. Difficulty 2 (the default) is the ramp that fits
# Mohler best, under the constraint zero_at >= 0.1: the unconstrained optimum has zero_at = 0, which Mohler
# (no off-topic answers) does not punish, but an unrelated answer (cosine ~0.1, recall 0, similarity
# ~0.05) must score 0 here. one_at well below 1 is deliberate: half the graded answers have full marks, and
# saturating near-complete answers at 1 matches that. The other difficulties step both ends by 0.05:
# zero_at = max(0.10, 0.05 d), one_at = 0.50 + 0.05 d. Every one_at is at most 0.75, so a near-verbatim
# paraphrase (cosine ~0.9, recall ~1, similarity ~0.95) scores 1 at every difficulty.
DEFAULT_THRESHOLDS: dict[int, tuple[float, float]] = {
    1: (0.10, 0.55),
    2: (0.10, 0.60),
    3: (0.15, 0.65),
    4: (0.20, 0.70),
    5: (0.25, 0.75),
}

# A compact English stop list: function words, auxiliaries, pronouns and common contractions. These carry
# no fact that could show the user knows the other person's answer ("he said that it was ...").
STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each either else ever few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself just me
    more most my myself neither no nor not of off on once only or other our ours ourselves out over own same
    she should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom whose why will with
    would you your yours yourself yourselves
    im ive id ill youre youve youd youll hes shes its were theyre theyve weve thats theres whats
    dont doesnt didnt isnt arent wasnt werent cant couldnt wont wouldnt shouldnt havent hasnt hadnt
    s t d ll m re ve
    """.split()
)

# Words: runs of letters/digits (any script), apostrophes inside a word kept so contractions stay one word.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
# Stemming truncates at this many characters: it conflates derivations a suffix stripper misses
# ("implement"/"implementation", "photograph"/"photography", "travel"/"travelling") at the cost of a few
# false merges between long words with a common start; on Mohler 6 beats both no truncation and 4-5.
_STEM_LENGTH = 6


class MatchParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Parameters of :func:`match_score` (decodable from settings with msgspec; unknown keys are refused).

    Attributes:
        lexical_weight: weight of the lexical recall in the blend with the cosine, in ``[0, 1]``
            (0: cosine only; 1: recall only). Default 0.5.
        question_word_weight: weight, in ``[0, 1]``, of a reference word that also occurs in the question,
            relative to a reference-only word (0: ignore question words; 1: no question demoting). Default 0.1.
        thresholds: per difficulty, ``(zero_at, one_at)`` on the blended similarity, with
            ``0 <= zero_at < one_at <= 1``; both must not decrease as the difficulty rises. Default
            :data:`DEFAULT_THRESHOLDS` (difficulties 1 to 5).
    """

    lexical_weight: float = DEFAULT_LEXICAL_WEIGHT
    question_word_weight: float = DEFAULT_QUESTION_WORD_WEIGHT
    thresholds: dict[int, tuple[float, float]] = msgspec.field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    def __post_init__(self) -> None:
        # msgspec calls this after __init__ and after decoding, so bad settings fail at load time.
        for name in ("lexical_weight", "question_word_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not self.thresholds:
            raise ValueError("thresholds must name at least one difficulty")
        previous: tuple[int, float, float] | None = None
        for difficulty in sorted(self.thresholds):
            pair = self.thresholds[difficulty]
            if len(pair) != 2:
                raise ValueError(f"thresholds[{difficulty}] must be (zero_at, one_at), got {pair!r}")
            zero_at, one_at = pair
            if not all(math.isfinite(v) for v in pair) or not 0.0 <= zero_at < one_at <= 1.0:
                raise ValueError(f"thresholds[{difficulty}] must satisfy 0 <= zero_at < one_at <= 1, got {pair!r}")
            if previous is not None and (zero_at < previous[1] or one_at < previous[2]):
                raise ValueError(
                    f"thresholds must not decrease with difficulty: {difficulty} has {pair!r}, "
                    f"{previous[0]} has {previous[1:]!r}"
                )
            previous = (difficulty, zero_at, one_at)

    def ramp_for(self, difficulty: int) -> tuple[float, float]:
        """``(zero_at, one_at)`` for ``difficulty``; ValueError for a difficulty that is not configured."""
        try:
            return self.thresholds[difficulty]
        except KeyError:
            raise ValueError(f"no thresholds for difficulty {difficulty!r} (have {sorted(self.thresholds)})") from None


class MatchFeatures(msgspec.Struct, frozen=True):
    """Lexical overlap of a response with a reference, counted on stemmed content words ("terms").

    The reference's terms are split in two: those that also occur in the question and those that do not,
    so that :meth:`recall` can demote the question's words with any weight without re-tokenising.

    Attributes:
        reference_terms: reference terms that are not in the question.
        reference_hits: how many of those the response contains.
        question_terms: reference terms that are also in the question.
        question_hits: how many of those the response contains.
        response_terms: distinct terms in the response.
        response_empty: the response is empty or whitespace only.
    """

    reference_terms: int
    reference_hits: int
    question_terms: int
    question_hits: int
    response_terms: int
    response_empty: bool

    def recall(self, question_word_weight: float = DEFAULT_QUESTION_WORD_WEIGHT) -> float | None:
        """Weighted share of the reference's terms found in the response; None when the reference has none.

        A reference term found in the question counts ``question_word_weight``, any other term 1. When
        every reference term is a question term the weights cancel out, so the recall is still defined
        (plain recall over the question terms) even with a tiny weight; with weight 0 it is then None.
        """
        total = self.reference_terms + question_word_weight * self.question_terms
        if total <= 0.0:
            return None
        return (self.reference_hits + question_word_weight * self.question_hits) / total


def stem(word: str) -> str:
    """A light, language-agnostic-enough stemmer for lower-cased English words.

    Strips one inflection (``-ies -ing -ed -es -s``, keeping at least 3 letters; not ``-ss -us -is``),
    undoubles a final consonant left by ``-ing``/``-ed`` ("running" -> "run"), drops a final ``e`` and
    maps a final ``y`` to ``i`` so that "hike"/"hiking"/"hiked", "love"/"loves" and "story"/"stories"
    meet, then truncates to 6 characters (see ``_STEM_LENGTH``). Words of 3 letters or fewer are kept.
    """
    if word.endswith("'s"):
        word = word[:-2]
    word = word.replace("'", "")
    if len(word) <= 3:
        return word
    for suffix in ("ies", "ing", "ed", "es", "s"):
        if not word.endswith(suffix) or len(word) - len(suffix) < 3:
            continue
        if suffix == "s" and word.endswith(("ss", "us", "is")):
            continue
        word = word[: -len(suffix)]
        if suffix in ("ing", "ed") and len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "lsz":
            word = word[:-1]
        elif suffix == "ies":
            word += "i"
        break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    if len(word) > 3 and word.endswith("y"):
        word = word[:-1] + "i"
    return word[:_STEM_LENGTH]


@functools.lru_cache(maxsize=4096)
def terms(text: str) -> frozenset[str]:
    """Stemmed content words of ``text`` (case and accents folded); all its words when none is a content word.

    The fallback keeps a reference such as "No, not at all" (all stop words) comparable with "no".
    Cached: references and questions repeat for every answer scored against them.
    """
    folded = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES).casefold())
    # drop accents ("café" = "cafe"): users type them inconsistently; both sides are folded the same way
    normalised = "".join(c for c in folded if not unicodedata.combining(c))
    words = _WORD.findall(normalised)
    content = [w for w in words if w not in STOP_WORDS and w.replace("'", "") not in STOP_WORDS]
    return frozenset(stem(w) for w in (content or words))


def match_features(response: str, reference: str, question: str | None) -> MatchFeatures:
    """Count the reference's terms found in the response, split by whether the question has them too."""
    response_terms = terms(response)
    reference_terms = terms(reference)
    question_terms = terms(question) if question else frozenset()
    shared = reference_terms & question_terms
    own = reference_terms - shared
    return MatchFeatures(
        reference_terms=len(own),
        reference_hits=len(own & response_terms),
        question_terms=len(shared),
        question_hits=len(shared & response_terms),
        response_terms=len(response_terms),
        response_empty=not response.strip(),
    )


def blended_similarity(cosine: float, features: MatchFeatures, params: MatchParams) -> float:
    """``(1 - w) * cosine + w * recall``, with the cosine clipped to ``[0, 1]``.

    Falls back to the cosine alone when the reference has no word at all (emoji, punctuation), where
    recall is undefined. Negative cosines (rare with this model) mean "unrelated" just like 0 does.
    """
    cosine = float(cosine)
    if not math.isfinite(cosine):
        raise ValueError(f"cosine must be a finite number, got {cosine!r}")
    cosine = min(max(cosine, 0.0), 1.0)
    recall = features.recall(params.question_word_weight)
    if recall is None:
        return cosine
    return (1.0 - params.lexical_weight) * cosine + params.lexical_weight * recall


def ramp(similarity: float, zero_at: float, one_at: float) -> float:
    """0 at or below ``zero_at``, 1 at or above ``one_at``, linear in between."""
    return min(max((similarity - zero_at) / (one_at - zero_at), 0.0), 1.0)


def match_score(
    cosine: float,
    response: str,
    reference: str,
    question: str | None,
    *,
    difficulty: int,
    params: MatchParams,
) -> float:
    """Score in ``[0, 1]`` of ``response`` against ``reference``, given their embeddings' cosine.

    Args:
        cosine: cosine similarity of the embedded response and the embedded reference.
        response: the user's answer. Empty or whitespace-only scores 0.
        reference: what the other person actually wrote.
        question: the question the reference answered (its words are demoted in the overlap), or None.
        difficulty: selects the ramp in ``params.thresholds`` (ValueError when not configured).
        params: blend and ramp parameters (:class:`MatchParams`).
    """
    zero_at, one_at = params.ramp_for(difficulty)
    features = match_features(response, reference, question)
    if features.response_empty:
        return 0.0
    return ramp(blended_similarity(cosine, features, params), zero_at, one_at)
