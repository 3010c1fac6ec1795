"""What keywords.overlap scores, and how its settings change that."""

from __future__ import annotations

import pytest
from plugins.context import PluginContext
from plugins.scorer import ScoreRequest

from ck_scorer_keywords import KeywordOverlapScorer, KeywordSettings, register_scorers

KEY = "Road trips with no fixed plan"


def answer(response: str, key: str | None = KEY) -> ScoreRequest:
    return ScoreRequest(
        question_id="q1", kind="COMPREHENSION", prompt="What is Ada's ideal Sunday?", response=response, answer_key=key
    )


async def score(response: str, key: str | None = KEY, **settings: object) -> tuple[float, tuple[str, ...]]:
    [result] = await KeywordOverlapScorer(KeywordSettings(**settings)).score([answer(response, key)])
    return result.score, result.flags


@pytest.mark.asyncio
async def test_fraction_of_key_words_present() -> None:
    assert await score("ROAD TRIPS, no plan!") == (pytest.approx(0.75), ())  # road trips plan; not fixed
    assert await score("A fixed plan") == (pytest.approx(0.5), ())
    assert await score("Karaoke with friends") == (0.0, ())


@pytest.mark.asyncio
async def test_settings_change_what_counts() -> None:
    assert (await score("road trips", min_word_length=5))[0] == 0.5  # only "trips" and "fixed" count
    assert (await score("road", extra_stop_words=["trips", "fixed", "plan"]))[0] == 1.0


@pytest.mark.asyncio
async def test_edge_cases_are_flagged_not_raised() -> None:
    assert await score("anything", key=None) == (0.0, ("no_answer_key",))
    assert await score("road trips " + "x" * 6000, max_response_chars=100) == (pytest.approx(0.5), ("truncated",))
    assert await score("It is", key="it is") == (1.0, ())  # only stop words: compared whole


def test_settings_come_from_the_plugin_table_and_are_checked() -> None:
    registered = []
    register_scorers(registered.append, PluginContext(settings={"keywords": {"min_word_length": 5}}))
    assert registered[0].settings.min_word_length == 5
    register_scorers(registered.append, PluginContext(settings={"keywords": {"min_word_length": "4"}}))  # from env
    assert registered[1].settings.min_word_length == 4
    with pytest.raises(ValueError, match=r"\[plugins.config.keywords\]: Object contains unknown field `min_len`"):
        register_scorers(registered.append, PluginContext(settings={"keywords": {"min_len": 5}}))
