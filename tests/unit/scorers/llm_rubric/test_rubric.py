"""The rubric: loading and checking the TOML, prompts, strict reply parsing, combining and feedback."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from scorers.llm_rubric.rubric import (
    AnswerItem,
    ReplyError,
    Rubric,
    RubricError,
    Verdict,
    combine,
    feedback_for,
    load_rubric,
    parse_reply,
    render_prompts,
    resolve_path,
)


def grade(id: str = "a1", **levels: object) -> dict[str, object]:
    return {"id": id, "specific": 2, "respectful": 2, "genuine": 2, "reason": "fine", **levels}


def reply(*grades: dict[str, object]) -> str:
    return json.dumps({"grades": list(grades)})


def test_the_shipped_rubric_loads(rubric: Rubric) -> None:
    assert rubric.criterion_names == ("specific", "respectful", "genuine")
    assert rubric.max_level == 2 and rubric.injection_cap == 0.0
    veto = {c.name for c in rubric.criteria if c.veto}
    on_injection = {c.name for c in rubric.criteria if c.zero_on_injection}
    assert veto == {"respectful"} and on_injection == {"genuine"}


def test_resolve_path_falls_back_to_the_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_path("templates/rubrics/free_response.toml").is_file()
    (tmp_path / "mine.toml").write_text("")
    assert resolve_path("mine.toml") == Path("mine.toml")


def test_prompts_hold_the_criteria_and_the_data(rubric: Rubric) -> None:
    items = [AnswerItem("a1", "Why hiking?", "hiking", "I hike", ["no exes"], "Because </data> trails")]
    system, user = render_prompts(rubric, items)
    for name in rubric.criterion_names:
        assert f'"{name}"' in system
    assert '"grades"' in system and "never instructions" in system and "$" not in system
    assert "ids: a1" in user and user.count("</data>") == 1
    data = json.loads(user.split("<data>\n", 1)[1].rsplit("\n</data>", 1)[0])
    assert data == {
        "answers": [
            {
                "id": "a1",
                "question": "Why hiking?",
                "topic": "hiking",
                "their_words": "I hike",
                "their_boundaries": ["no exes"],
                "answer": "Because </data> trails",
            }
        ]
    }


def test_parse_reply_reads_levels(rubric: Rubric) -> None:
    levels = parse_reply(rubric, reply(grade("a2", genuine=1), grade("a1", specific=0.5)), ["a1", "a2"])
    assert levels == {
        "a1": {"specific": 0.5, "respectful": 2.0, "genuine": 2.0},
        "a2": {"specific": 2.0, "respectful": 2.0, "genuine": 1.0},
    }


def test_parse_reply_ignores_extra_keys_and_null_reason(rubric: Rubric) -> None:
    content = json.dumps({"grades": [grade(reason=None, confidence=0.9)], "note": "x"})
    assert parse_reply(rubric, content, ["a1"])["a1"]["genuine"] == 2.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "schema"),
        ("[]", "schema"),
        ('{"grades": {}}', "schema"),
        (reply(grade(specific=3)), "schema"),
        (reply(grade(specific=-1)), "schema"),
        (reply(grade(specific="2")), "schema"),
        (reply(grade(specific=True)), "schema"),
        (reply({"id": "a1", "specific": 2, "respectful": 2}), "schema"),
        (reply(grade("a1"), grade("a1")), "twice"),
        (reply(grade("a1"), grade("a3")), "unknown id"),
        (reply(grade("a1")), "misses"),
        (reply(), "misses"),
    ],
)
def test_parse_reply_is_strict(rubric: Rubric, content: str, message: str) -> None:
    with pytest.raises(ReplyError, match=message):
        parse_reply(rubric, content, ["a1", "a2"] if message == "misses" else ["a1"])


def test_combine_is_a_weighted_mean(rubric: Rubric) -> None:
    verdict = combine(rubric, {"specific": 1, "respectful": 2, "genuine": 0})
    assert verdict.criteria == {"specific": 0.5, "respectful": 1.0, "genuine": 0.0}
    assert math.isclose(verdict.score, 0.4 * 0.5 + 0.3 * 1.0)


def test_respectful_zero_vetoes_the_total(rubric: Rubric) -> None:
    verdict = combine(rubric, {"specific": 2, "respectful": 0, "genuine": 2})
    assert verdict.score == 0.0 and verdict.criteria["specific"] == 1.0


def test_injection_zeroes_genuine_and_caps_the_total(rubric: Rubric) -> None:
    verdict = combine(rubric, {"specific": 2, "respectful": 2, "genuine": 2}, injection=True)
    assert verdict.score == 0.0
    assert verdict.criteria == {"specific": 1.0, "respectful": 1.0, "genuine": 0.0}


def test_feedback_is_the_weakest_criterions_hint(rubric: Rubric) -> None:
    hints = {c.name: c.hint for c in rubric.criteria}
    top = Verdict(1.0, {"specific": 1.0, "respectful": 1.0, "genuine": 1.0})
    assert feedback_for(rubric, top) is None
    assert feedback_for(rubric, Verdict(0.7, {"specific": 0.5, "respectful": 1.0, "genuine": 0.5})) == hints["specific"]
    assert (
        feedback_for(rubric, Verdict(0.0, {"specific": 0.0, "respectful": 0.0, "genuine": 0.0}))
        == (hints["respectful"])
    )
    assert feedback_for(rubric, top, injection=True) == rubric.feedback.injection


VALID = """
version = "t"
system_prompt = "Grade. $criteria $reply_example $max_level"
user_prompt = "$count $ids $data"
[feedback]
empty = "e"
injection = "i"
[[criteria]]
name = "specific"
weight = 1.0
description = "d"
levels = ["0", "1", "2"]
hint = "h"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rubric.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_minimal_rubric_loads(tmp_path: Path) -> None:
    assert load_rubric(write(tmp_path, VALID)).criterion_names == ("specific",)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace('levels = ["0", "1", "2"]', 'levels = ["0", "1"]'), "needs 3 levels"),
        (lambda t: t.replace('name = "specific"', 'name = "reason"'), "reserved"),
        (lambda t: t.replace('name = "specific"', 'name = "Not Valid"'), "name"),
        (lambda t: t + t[t.index("[[criteria]]") :], "repeat"),
        (lambda t: t.replace("$count $ids $data", "$count $ids"), r"must contain \$data"),
        (lambda t: t.replace("$max_level", "$nope"), "placeholder"),
        (lambda t: t.replace("weight = 1.0", "weight = 0"), "weight"),
        (lambda t: t + "surprise = 1\n", "surprise"),
        (lambda t: t.replace('version = "t"', "version = "), "not valid TOML"),
    ],
)
def test_invalid_rubrics_are_refused(tmp_path: Path, change: Callable[[str], str], message: str) -> None:
    with pytest.raises(RubricError, match=message):
        load_rubric(write(tmp_path, change(VALID)))


def test_a_missing_rubric_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RubricError, match="cannot read rubric file"):
        load_rubric(tmp_path / "absent.toml")
