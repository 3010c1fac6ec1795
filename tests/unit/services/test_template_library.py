"""read_template_files: the real seed library parses and can make a quiz; bad seed files are named."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from app.domain.generation import ALLOWED_PLACEHOLDERS, QuizShape, generate_quiz, template_placeholders
from app.domain.quiz import ConsentPreference, PromptPair, QuestionKind, TargetProfile, TemplatePurpose
from app.services.template_library import TemplateFileError, read_template_files

GOOD_ENTRY = """
[[template]]
key = "{key}"
kind = "COMPREHENSION"
purpose = "QUESTION"
text = "{text}"
"""


def entry(key: str = "comp.q", text: str = "What did {name} say about {prompt}?") -> str:
    return GOOD_ENTRY.format(key=key, text=text)


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text, encoding="utf-8")


def test_real_library_parses_with_unique_keys_and_allowed_placeholders() -> None:
    templates = read_template_files("templates/library")  # relative to the project root
    keys = [t.key for t in templates]
    assert len(keys) == len(set(keys)) >= 10
    for template in templates:
        for wording in template.wordings:
            assert template_placeholders(wording) <= ALLOWED_PLACEHOLDERS
        if template.purpose is TemplatePurpose.DISTRACTOR:
            assert template_placeholders(template.text) == set()
    for kind in QuestionKind:
        assert any(t.kind is kind and t.purpose is TemplatePurpose.QUESTION for t in templates), kind
    for kind in (QuestionKind.COMPREHENSION, QuestionKind.CONSENT):
        assert any(t.kind is kind and t.purpose is TemplatePurpose.DISTRACTOR for t in templates), kind


def test_real_library_makes_full_quizzes_at_every_difficulty() -> None:
    templates = read_template_files(str(Path(__file__).resolve().parents[3] / "templates" / "library"))
    target = TargetProfile(
        user_id=uuid.uuid4(),
        display_name="Sam",
        prompts=[PromptPair("A perfect day", "Sea swimming then chips"), PromptPair("I'm weirdly good at", "Origami")],
        consent_preferences=[
            ConsentPreference("pace", "Slow is good"),
            ConsentPreference("meeting", "Public places first"),
        ],
    )
    shape = QuizShape(
        comprehension=2, consent=2, free_response=1, choices_per_question=6, free_text_comprehension=False
    )
    for difficulty in range(1, 6):
        for seed in range(20):
            questions = generate_quiz(target, templates, shape, difficulty, random.Random(seed))
            assert len(questions) == 5
            assert all(len(q.choices) == 6 for q in questions if q.choices is not None)


def test_several_files_are_merged(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", entry("a.one"))
    write(tmp_path, "b.toml", entry("b.one") + entry("b.two"))
    write(tmp_path, "notes.txt", "not a template file")
    assert sorted(t.key for t in read_template_files(str(tmp_path))) == ["a.one", "b.one", "b.two"]


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateFileError, match="no \\*.toml"):
        read_template_files(str(tmp_path))


def test_unknown_placeholder_names_file_and_entry(tmp_path: Path) -> None:
    write(tmp_path, "bad.toml", entry("comp.age", "How old is {name}? {age}"))
    with pytest.raises(TemplateFileError, match=r"bad\.toml: template comp\.age: unknown placeholders \['age'\]"):
        read_template_files(str(tmp_path))


def test_unknown_placeholder_in_a_variant_is_found(tmp_path: Path) -> None:
    write(tmp_path, "bad.toml", entry("comp.v") + 'variants = ["fine {name}", "bad {city}"]\n')
    with pytest.raises(TemplateFileError, match="city"):
        read_template_files(str(tmp_path))


def test_malformed_braces_name_file_and_entry(tmp_path: Path) -> None:
    write(tmp_path, "bad.toml", entry("comp.brace", "Unbalanced {name"))
    with pytest.raises(TemplateFileError, match=r"bad\.toml: template comp\.brace"):
        read_template_files(str(tmp_path))


def test_duplicate_key_across_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", entry("same.key"))
    write(tmp_path, "b.toml", entry("same.key"))
    with pytest.raises(TemplateFileError, match=r"b\.toml: duplicate template key same\.key"):
        read_template_files(str(tmp_path))


def test_duplicate_key_in_one_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", entry("same.key") + entry("same.key"))
    with pytest.raises(TemplateFileError, match="duplicate template key same.key"):
        read_template_files(str(tmp_path))


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", entry("fine"))
    write(tmp_path, "broken.toml", "[[template]\nkey = ")
    with pytest.raises(TemplateFileError, match=r"broken\.toml"):
        read_template_files(str(tmp_path))


@pytest.mark.parametrize(
    "body",
    [
        'key = "x"\nkind = "ESSAY"\npurpose = "QUESTION"\ntext = "t"\n',  # unknown kind
        'key = "x"\nkind = "CONSENT"\npurpose = "QUESTION"\n',  # text missing
        'key = "Bad Key"\nkind = "CONSENT"\npurpose = "QUESTION"\ntext = "t"\n',  # key pattern
        'key = "x"\nkind = "CONSENT"\npurpose = "QUESTION"\ntext = "t"\ndifficulty = 9\n',  # out of range
        'key = "x"\nkind = "CONSENT"\npurpose = "QUESTION"\ntext = "t"\ncolour = "red"\n',  # unknown field
    ],
)
def test_invalid_entries_name_the_file(tmp_path: Path, body: str) -> None:
    write(tmp_path, "entries.toml", "[[template]]\n" + body)
    with pytest.raises(TemplateFileError, match=r"entries\.toml"):
        read_template_files(str(tmp_path))


def test_distractors_take_no_placeholders(tmp_path: Path) -> None:
    (tmp_path / "lib.toml").write_text(
        '[[template]]\nkey = "d"\nkind = "CONSENT"\npurpose = "DISTRACTOR"\ntext = "Ask {name} first"\n'
    )
    with pytest.raises(TemplateFileError, match="distractors take no placeholders"):
        read_template_files(str(tmp_path))
