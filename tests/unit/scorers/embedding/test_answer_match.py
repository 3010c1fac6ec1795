"""answer_match: lexical features, blend and per-difficulty ramps (pure maths, no model)."""

from __future__ import annotations

import itertools
import math

import msgspec
import pytest

from scorers.embedding.answer_match import (
    DEFAULT_LEXICAL_WEIGHT,
    DEFAULT_QUESTION_WORD_WEIGHT,
    DEFAULT_THRESHOLDS,
    MatchFeatures,
    MatchParams,
    blended_similarity,
    match_features,
    match_score,
    ramp,
    stem,
    terms,
)

QUESTION = "What does your ideal Sunday look like?"
REFERENCE = "Sleeping in late, then brunch with friends and a long walk by the river."
PARAPHRASE = "He sleeps in late, has brunch with his friends and takes a long walk by the river"
PARTIAL = "Brunch with friends."
UNRELATED = "I fix old motorbikes in my garage."
DEFAULT = MatchParams()
DIFFICULTIES = sorted(DEFAULT_THRESHOLDS)
COSINES = [-0.3, -0.01, 0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.0000001]


def score(cosine: float, response: str, difficulty: int = 2, params: MatchParams = DEFAULT) -> float:
    return match_score(cosine, response, REFERENCE, QUESTION, difficulty=difficulty, params=params)


# ------------------------------------------------------------------------------------------------ defaults


def test_defaults_are_the_documented_round_numbers() -> None:
    assert DEFAULT.lexical_weight == DEFAULT_LEXICAL_WEIGHT == 0.5
    assert DEFAULT.question_word_weight == DEFAULT_QUESTION_WORD_WEIGHT == 0.1
    assert DEFAULT.thresholds == DEFAULT_THRESHOLDS
    assert DEFAULT.thresholds[2] == (0.10, 0.60)
    assert sorted(DEFAULT.thresholds) == [1, 2, 3, 4, 5]
    for zero_at, one_at in DEFAULT.thresholds.values():
        assert zero_at >= 0.1  # an unrelated answer (similarity ~0.05) scores 0
        assert one_at <= 0.75  # a near-verbatim paraphrase (similarity ~0.95) scores 1


def test_default_thresholds_are_not_shared_between_instances() -> None:
    first, second = MatchParams(), MatchParams()
    first.thresholds[9] = (0.5, 0.9)
    assert 9 not in second.thresholds
    assert 9 not in DEFAULT_THRESHOLDS


def test_harder_difficulties_need_higher_similarity() -> None:
    pairs = [DEFAULT.thresholds[d] for d in DIFFICULTIES]
    for easier, harder in itertools.pairwise(pairs):
        assert harder[0] >= easier[0] and harder[1] > easier[1]


# ------------------------------------------------------------------------------------------------ invariants


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("response", [REFERENCE, PARAPHRASE, PARTIAL, UNRELATED, "x", "??", "ok 🙂"])
def test_score_is_in_the_unit_interval_and_monotonic_in_the_cosine(difficulty: int, response: str) -> None:
    scores = [score(c, response, difficulty) for c in COSINES]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(b >= a for a, b in itertools.pairwise(scores)), scores


@pytest.mark.parametrize("response", [PARAPHRASE, PARTIAL, UNRELATED])
@pytest.mark.parametrize("cosine", [0.2, 0.45, 0.6, 0.75, 0.9])
def test_score_does_not_rise_with_difficulty(response: str, cosine: float) -> None:
    scores = [score(cosine, response, d) for d in DIFFICULTIES]
    assert all(b <= a for a, b in itertools.pairwise(scores)), scores


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("response", ["", " ", "\n\t  ", "\u3000"])
def test_empty_or_whitespace_response_scores_zero_whatever_the_cosine(difficulty: int, response: str) -> None:
    assert score(1.0, response, difficulty) == 0.0
    assert score(0.4, response, difficulty) == 0.0


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_exact_and_near_exact_answers_score_one_at_every_difficulty(difficulty: int) -> None:
    assert score(1.0, REFERENCE, difficulty) == 1.0
    assert score(1.0, REFERENCE.upper(), difficulty) == 1.0
    # the same facts in other words: cosine ~0.85-0.9 for such a paraphrase with this model
    assert score(0.85, PARAPHRASE, difficulty) == 1.0


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_unrelated_answer_scores_zero_at_every_difficulty(difficulty: int) -> None:
    # cosine of unrelated sentences with this model: about -0.05 to 0.2
    for cosine in (-0.05, 0.0, 0.1, 0.2):
        assert score(cosine, UNRELATED, difficulty) == 0.0


def test_partial_answer_scores_in_between() -> None:
    value = score(0.6, PARTIAL)
    assert 0.2 < value < 0.9
    assert score(0.6, PARAPHRASE) > value


def test_matching_words_raise_the_score_at_equal_cosine() -> None:
    assert score(0.5, "brunch and a walk by the river") > score(0.5, "something else entirely")


def test_question_words_count_less_than_reference_only_words() -> None:
    # both answers share two words with the reference; only the second shares words the question lacks
    echo = match_features("My ideal Sunday.", "My ideal Sunday is brunch with Anna.", QUESTION)
    facts = match_features("Brunch, Anna.", "My ideal Sunday is brunch with Anna.", QUESTION)
    assert echo.recall() < facts.recall()
    assert blended_similarity(0.5, echo, DEFAULT) < blended_similarity(0.5, facts, DEFAULT)


def test_question_weight_one_is_plain_recall() -> None:
    features = match_features("ideal sunday brunch", "My ideal Sunday is brunch with Anna.", QUESTION)
    assert features.recall(1.0) == pytest.approx(3 / 4)
    assert features.recall(0.0) == pytest.approx(1 / 2)


# ------------------------------------------------------------------------------------------------ features


def test_match_features_counts_terms_by_question_membership() -> None:
    features = match_features("Brunch by the river on Sunday", REFERENCE, "Your ideal Sunday, in a sentence?")
    assert isinstance(features, MatchFeatures)
    reference_terms = terms(REFERENCE)
    assert features.reference_terms + features.question_terms == len(reference_terms)
    assert features.question_terms == 0  # "Sunday" is in the question but not in the reference
    assert features.reference_hits == 2  # brunch, river
    assert features.response_terms == len(terms("Brunch by the river on Sunday")) == 3
    assert not features.response_empty
    assert features.recall() == pytest.approx(2 / len(reference_terms))


def test_no_question_means_no_demoting() -> None:
    for question in (None, ""):
        features = match_features("brunch", "brunch with Anna", question)
        assert features.question_terms == 0
        assert features.recall() == pytest.approx(1 / 2)


def test_every_reference_word_in_the_question_keeps_recall_defined() -> None:
    features = match_features("a morning person", "A morning person.", "Is Bob a morning person?")
    assert features.reference_terms == 0 and features.question_terms == 2
    assert features.recall() == pytest.approx(1.0)
    assert features.recall(0.0) is None


def test_reference_without_words_falls_back_to_the_cosine() -> None:
    features = match_features("party time", "🎉🎉", None)
    assert features.recall() is None
    assert blended_similarity(0.7, features, DEFAULT) == pytest.approx(0.7)


def test_stop_word_only_text_keeps_its_words() -> None:
    assert terms("No, not at all.") == frozenset({"no", "not", "at", "all"})
    features = match_features("no", "No!", "Do you smoke?")
    assert features.recall() == pytest.approx(1.0)


def test_terms_drop_stop_words_case_and_punctuation() -> None:
    assert terms("The DOG, and the dogs!") == frozenset({"dog"})
    assert terms("I don't like it") == frozenset({"lik"})
    assert terms("Bob’s café") == terms("bob's CAFÉ") == frozenset({"bob", "caf"})
    assert terms("") == frozenset()


@pytest.mark.parametrize(
    "words",
    [
        ("hike", "hiking", "hiked", "hikes"),
        ("love", "loves", "loved", "loving"),
        ("story", "stories"),
        ("run", "running"),
        ("dog", "dogs"),
        ("implement", "implementation", "implemented"),
        ("travel", "travelling", "travels"),
    ],
)
def test_stem_conflates_inflections(words: tuple[str, ...]) -> None:
    assert len({stem(w) for w in words}) == 1, {w: stem(w) for w in words}


def test_stem_keeps_short_words_and_unrelated_words_apart() -> None:
    assert stem("bus") == "bus" and stem("is") == "is"
    assert stem("class") == "class"
    assert stem("cats") == stem("cat") == "cat"
    assert stem("cook") != stem("book")
    assert len(stem("internationalisation")) == 6


# ------------------------------------------------------------------------------------------------ maths


def test_blend_and_ramp_formulas() -> None:
    features = match_features("brunch", "brunch with Anna", None)  # recall 1/2
    params = MatchParams(lexical_weight=0.25, question_word_weight=0.0, thresholds={1: (0.2, 0.7)})
    similarity = blended_similarity(0.6, features, params)
    assert similarity == pytest.approx(0.75 * 0.6 + 0.25 * 0.5)
    assert ramp(similarity, 0.2, 0.7) == pytest.approx((similarity - 0.2) / 0.5)
    assert match_score(0.6, "brunch", "brunch with Anna", None, difficulty=1, params=params) == pytest.approx(
        (similarity - 0.2) / 0.5
    )
    assert ramp(0.1, 0.2, 0.7) == 0.0 and ramp(0.9, 0.2, 0.7) == 1.0


def test_lexical_weight_zero_is_the_cosine_alone() -> None:
    params = MatchParams(lexical_weight=0.0, thresholds={2: (0.0, 1.0)})
    for cosine in (0.0, 0.3, 0.8, 1.0):
        assert score(cosine, UNRELATED, params=params) == pytest.approx(cosine)
        assert score(cosine, REFERENCE, params=params) == pytest.approx(cosine)


def test_out_of_range_cosines_are_clipped() -> None:
    features = match_features(UNRELATED, REFERENCE, QUESTION)
    assert blended_similarity(-0.4, features, DEFAULT) == 0.0
    assert blended_similarity(1.2, match_features(REFERENCE, REFERENCE, QUESTION), DEFAULT) == pytest.approx(1.0)


@pytest.mark.parametrize("cosine", [math.nan, math.inf, -math.inf])
def test_non_finite_cosine_is_an_error(cosine: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        score(cosine, PARTIAL)


def test_unknown_difficulty_is_an_error() -> None:
    with pytest.raises(ValueError, match="difficulty 7"):
        score(0.5, PARTIAL, difficulty=7)
    with pytest.raises(ValueError, match="difficulty"):
        score(0.5, "", difficulty=0)


# ------------------------------------------------------------------------------------------------ params


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lexical_weight": -0.1}, "lexical_weight"),
        ({"lexical_weight": 1.5}, "lexical_weight"),
        ({"lexical_weight": math.nan}, "lexical_weight"),
        ({"question_word_weight": 2.0}, "question_word_weight"),
        ({"question_word_weight": -1e-9}, "question_word_weight"),
        ({"thresholds": {}}, "at least one"),
        ({"thresholds": {2: (0.6, 0.6)}}, "zero_at < one_at"),
        ({"thresholds": {2: (0.7, 0.3)}}, "zero_at < one_at"),
        ({"thresholds": {2: (-0.1, 0.5)}}, "zero_at < one_at"),
        ({"thresholds": {2: (0.1, 1.2)}}, "zero_at < one_at"),
        ({"thresholds": {2: (0.1, math.nan)}}, "zero_at < one_at"),
        ({"thresholds": {1: (0.2, 0.6), 2: (0.1, 0.7)}}, "must not decrease"),
        ({"thresholds": {1: (0.1, 0.7), 3: (0.2, 0.6)}}, "must not decrease"),
    ],
)
def test_params_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MatchParams(**kwargs)  # type: ignore[arg-type]


def test_params_decode_from_settings_and_refuse_unknown_fields() -> None:
    raw = b'{"lexical_weight": 0.3, "thresholds": {"1": [0.1, 0.5], "2": [0.2, 0.6]}}'
    params = msgspec.json.decode(raw, type=MatchParams)
    assert params.lexical_weight == 0.3
    assert params.question_word_weight == DEFAULT_QUESTION_WORD_WEIGHT
    assert params.thresholds == {1: (0.1, 0.5), 2: (0.2, 0.6)}
    with pytest.raises(msgspec.ValidationError, match="lexical_wieght"):
        msgspec.json.decode(b'{"lexical_wieght": 0.3}', type=MatchParams)
    with pytest.raises(msgspec.ValidationError, match="zero_at < one_at"):
        msgspec.json.decode(b'{"thresholds": {"2": [0.6, 0.2]}}', type=MatchParams)
    assert msgspec.json.decode(msgspec.json.encode(DEFAULT), type=MatchParams) == DEFAULT


def test_params_are_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULT.lexical_weight = 0.9  # type: ignore[misc]
