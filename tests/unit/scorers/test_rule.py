"""Built-in rule scorers: choice matching and the free-response length/copy rule."""

from __future__ import annotations

import pytest

from plugins.scorer import Scorer, ScoreRequest
from scorers.rule import ChoiceScorer, FreeResponseRuleScorer, LexicalOverlapScorer
from scorers.rule.overlap import content_words

QUESTION = "In your own words, what would you like to ask Ada about “My ideal Sunday”?"


def choice(response: str, answer_key: str | None = "Road trips with no fixed plan", qid: str = "q1") -> ScoreRequest:
    return ScoreRequest(
        question_id=qid,
        kind="COMPREHENSION",
        prompt="Which answer is Ada's?",
        response=response,
        choices=["Road trips with no fixed plan", "Karaoke nights"],
        answer_key=answer_key,
    )


def free(response: str, prompt: str = QUESTION, qid: str = "f1") -> ScoreRequest:
    return ScoreRequest(question_id=qid, kind="FREE_RESPONSE", prompt=prompt, response=response)


async def score_one(
    scorer: ChoiceScorer | FreeResponseRuleScorer | LexicalOverlapScorer, request: ScoreRequest
) -> tuple[float, str | None]:
    [result] = await scorer.score([request])
    assert result.question_id == request.question_id
    return result.score, result.feedback


def test_both_scorers_implement_the_protocol() -> None:
    for scorer in (ChoiceScorer(), FreeResponseRuleScorer()):
        assert isinstance(scorer, Scorer)
    assert ChoiceScorer().kinds == {"COMPREHENSION", "CONSENT"}
    assert FreeResponseRuleScorer().kinds == {"FREE_RESPONSE"}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Road trips with no fixed plan", 1.0),
        ("road trips WITH no fixed plan", 1.0),
        ("  Road   trips\twith no fixed plan \n", 1.0),
        ("Karaoke nights", 0.0),
        ("Road trips with no fixed plans", 0.0),
        ("", 0.0),
    ],
)
async def test_choice_scorer(response: str, expected: float) -> None:
    score, feedback = await score_one(ChoiceScorer(), choice(response))
    assert score == expected
    assert feedback is None


@pytest.mark.asyncio
async def test_choice_without_answer_key_scores_zero() -> None:
    assert (await score_one(ChoiceScorer(), choice("", answer_key=None)))[0] == 0.0
    assert (await score_one(ChoiceScorer(), choice("None", answer_key=None)))[0] == 0.0


@pytest.mark.asyncio
async def test_choice_scorer_batches_keep_question_ids() -> None:
    results = await ChoiceScorer().score(
        [choice("Karaoke nights", qid="a"), choice("Road trips with no fixed plan", qid="b")]
    )
    assert {r.question_id: r.score for r in results} == {"a": 0.0, "b": 1.0}
    assert await ChoiceScorer().score([]) == []


@pytest.mark.asyncio
async def test_free_response_length_bounds_after_strip() -> None:
    scorer = FreeResponseRuleScorer()
    assert (await score_one(scorer, free("x" * 19)))[0] == 0.0
    assert (await score_one(scorer, free("x" * 20)))[0] == 1.0
    assert (await score_one(scorer, free("   " + "x" * 19 + "\n\n   ")))[0] == 0.0  # padding does not count
    assert (await score_one(scorer, free("x" * 1000)))[0] == 1.0
    assert (await score_one(scorer, free("\n" + "x" * 1000 + "  ")))[0] == 1.0
    assert (await score_one(scorer, free("x" * 1001)))[0] == 0.0


@pytest.mark.asyncio
async def test_free_response_feedback_explains_without_a_key() -> None:
    scorer = FreeResponseRuleScorer()
    assert (await score_one(scorer, free("too short")))[1] == "Write at least 20 characters."
    assert (await score_one(scorer, free("y" * 1001)))[1] == "Keep it under 1,000 characters."
    assert (await score_one(scorer, free("What a lovely way to spend a weekend, where did you go last?")))[1] is None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "copy",
    [
        QUESTION,
        QUESTION.upper(),
        "  " + QUESTION.replace(" ", "   ") + "  ",
        "what would you like to ask Ada about",  # a substring of the question
        QUESTION.replace("Sunday", "Monday"),  # a near copy
    ],
)
async def test_copying_the_question_is_rejected(copy: str) -> None:
    score, feedback = await score_one(FreeResponseRuleScorer(), free(copy))
    assert score == 0.0
    assert feedback == "Answer in your own words rather than repeating the question."


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "answer",
    [
        "I'd love to hear where your best road trip ended up!",
        "Ich würde gern wissen, wohin dein schönster Ausflug ging.",
        "あなたの一番好きな日曜日の過ごし方についてもっと知りたいです。",
        "¿Cuál fue el mejor viaje sin plan que hiciste? 🚗🌄",
        "🚗🌄🍜🎶📚🚗🌄🍜🎶📚🚗🌄🍜🎶📚🚗🌄🍜🎶📚",
        "Что тебе больше всего нравится в воскресеньях?",
    ],
)
async def test_non_english_and_emoji_answers_are_fine(answer: str) -> None:
    assert (await score_one(FreeResponseRuleScorer(), free(answer)))[0] == 1.0


@pytest.mark.asyncio
async def test_length_is_counted_in_characters_not_bytes() -> None:
    scorer = FreeResponseRuleScorer()
    assert (await score_one(scorer, free("é" * 20)))[0] == 1.0  # 40 bytes in UTF-8, 20 characters
    assert (await score_one(scorer, free("🙂" * 19)))[0] == 0.0  # 76 bytes, 19 characters


# ------------------------------------------------------------------ lexical overlap (comprehension fallback)

KEY = "A long hike in the hills followed by a pub lunch with friends"


def comprehension(response: str, answer_key: str | None = KEY) -> ScoreRequest:
    return ScoreRequest(
        question_id="c1",
        kind="COMPREHENSION",
        prompt="What is Ada's ideal Sunday?",
        response=response,
        answer_key=answer_key,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("response", "low", "high"),
    [
        (KEY, 1.0, 1.0),
        ("walking in the hills for hours and then lunch at a pub with mates", 0.8, 1.0),  # a paraphrase
        ("Hills, then a pub.", 0.5, 0.6),  # two of seven content words: recall 2/7 / 0.5
        ("I honestly cannot remember, sorry.", 0.0, 0.0),
        ("", 0.0, 0.0),
        ("the a of and", 0.0, 0.0),  # stop words only
    ],
)
async def test_overlap_scores_shared_content_words(response: str, low: float, high: float) -> None:
    score, feedback = await score_one(LexicalOverlapScorer(), comprehension(response))
    assert low <= score <= high and feedback is None


@pytest.mark.asyncio
async def test_overlap_scales_down_a_response_that_sprays_words() -> None:
    spray = KEY + " " + " ".join(f"word{n}" for n in range(60))
    score, _ = await score_one(LexicalOverlapScorer(), comprehension(spray))
    assert score < 0.5


@pytest.mark.asyncio
async def test_overlap_without_an_answer_key_scores_zero() -> None:
    assert (await score_one(LexicalOverlapScorer(), comprehension(KEY, answer_key=None)))[0] == 0.0


def test_content_words_ignore_case_punctuation_stop_words_and_plurals() -> None:
    assert content_words("The HILLS, and a Hike!") == content_words("hill hikes")
