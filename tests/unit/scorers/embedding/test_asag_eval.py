"""asag_eval: the reader, the metrics, the cross-validation and the command line.

Everything here runs on a small table invented for the tests (everyday quiz questions, made-up answers and
grades), never on the Mohler data: its licence is unclear, so none of it may be copied into the project.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest

from scorers.embedding.answer_match import DEFAULT_THRESHOLDS, MatchParams, match_features, match_score
from scorers.embedding.asag_eval import (
    AsagData,
    blend_scores,
    cross_validate,
    encoder_score_fn,
    evaluate,
    load_asag,
    main,
    pearson,
)
from scorers.embedding.onnx_build import ModelFiles

COLUMNS = ["question_id", "assignment", "in_paper_set", "question", "reference_answer", "student_answer", "score_avg"]

# (question, reference, [(answer, grade 0-5), ...]); invented for these tests.
QUIZ = [
    (
        "What does your ideal Sunday look like?",
        "Sleeping in, then brunch with friends and a long walk by the river.",
        [
            ("Sleeping in, brunch with friends, then a long walk by the river.", 5.0),
            ("Brunch with friends and a walk.", 3.5),
            ("Going to the gym early.", 1.0),
            ("He repairs old bicycles for a living.", 0.0),
        ],
    ),
    (
        "Where did you grow up?",
        'In a small fishing village on the coast, "the end of the world" as we called it.',
        [
            ("In a small fishing village on the coast.", 5.0),
            ("Somewhere by the sea.", 2.5),
            ("In a big city.", 0.5),
            ("Pancakes with maple syrup.", 0.0),
        ],
    ),
    (
        "What is your favourite food?",
        "Spicy ramen with a soft boiled egg.",
        [
            ("Spicy ramen with a soft-boiled egg", 5.0),
            ("Ramen", 3.5),
            ("Pizza", 0.5),
            ("She has two younger brothers.", 0.0),
        ],
    ),
    (
        "What would you do with a free afternoon?",
        "Read a crime novel in the garden with a pot of tea.",
        [
            ("Read a crime novel with tea in the garden.", 5.0),
            ("Reading a book.", 3.0),
            ("Play video games.", 1.0),
            ("The train leaves at nine.", 0.0),
        ],
    ),
    (
        "Which country would you most like to visit?",
        "Japan, for the temples in Kyoto and the food.",
        [
            ("Japan, to see the temples in Kyoto and eat the food", 5.0),
            ("Japan", 4.0),
            ("Italy", 0.5),
            ("My sister works in a bank.", 0.0),
        ],
    ),
    (
        "What is your hidden talent?",
        "I can juggle five balls at once.",
        [
            ("He can juggle five balls at the same time.", 5.0),
            ("Juggling", 3.5),
            ("Singing", 0.5),
            ("It rained all week.", 0.0),
        ],
    ),
]


def write_quiz(path: Path, *, paper_flags: bool = False) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for number, (question, reference, answers) in enumerate(QUIZ):
            assignment = str(number // 2 + 1)  # 3 groups of 2 questions
            for index, (answer, grade) in enumerate(answers):
                flag = "0" if paper_flags and index == 3 else "1"
                writer.writerow(
                    [f"{assignment}.{number % 2 + 1}", assignment, flag, question, reference, answer, grade]
                )
    return path


# ------------------------------------------------------------------------------------------------ reader


def test_reader_parses_the_table(tmp_path: Path) -> None:
    data = load_asag(write_quiz(tmp_path / "quiz.tsv"))
    assert len(data) == 24
    assert data.questions[0] == QUIZ[0][0]
    assert data.references[4] == QUIZ[1][1]  # the quoted field comes back whole, quotes included
    assert '"the end of the world"' in data.references[4]
    assert data.responses[1] == QUIZ[0][2][1][0]
    np.testing.assert_allclose(data.gold[:4], [5.0, 3.5, 1.0, 0.0])
    assert sorted(set(data.groups)) == ["1", "2", "3"]
    assert data.items()[0] == (QUIZ[0][0], QUIZ[0][1], QUIZ[0][2][0][0])


def test_reader_paper_set_filter(tmp_path: Path) -> None:
    data = load_asag(write_quiz(tmp_path / "quiz.tsv", paper_flags=True), paper_set=True)
    assert len(data) == 18


def test_reader_groups_fall_back_to_the_question_id(tmp_path: Path) -> None:
    path = tmp_path / "ids.tsv"
    path.write_text(
        "question_id\tquestion\treference_answer\tstudent_answer\tscore_avg\n"
        "4.2\tQ?\tan answer\tan answer\t5\n"
        "7.1\tQ?\tan answer\tnothing\t0\n",
        encoding="utf-8",
    )
    assert load_asag(path).groups == ["4", "7"]


def test_reader_rejects_missing_columns_and_bad_grades(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text("question\tstudent_answer\tscore_avg\nQ?\tA\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="reference_answer"):
        load_asag(path)
    path.write_text("question\treference_answer\tstudent_answer\tscore_avg\nQ?\tR\tA\tfive\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:2: score_avg 'five'"):
        load_asag(path)
    path.write_text("question\treference_answer\tstudent_answer\tscore_avg\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no graded answers"):
        load_asag(path)


# ------------------------------------------------------------------------------------------------ metrics


def test_pearson_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_evaluate_calls_the_score_function_once_with_all_items(tmp_path: Path) -> None:
    data = load_asag(write_quiz(tmp_path / "quiz.tsv"))
    calls: list[int] = []

    def by_length(items: list[tuple[str | None, str, str]]) -> list[float]:
        calls.append(len(items))
        return [float(len(response)) for _, _, response in items]

    metrics = evaluate(data, by_length)
    assert calls == [len(data)]
    lengths = [len(r) for r in data.responses]
    assert metrics.pearson == pytest.approx(np.corrcoef(lengths, data.gold)[0, 1])
    with pytest.raises(ValueError, match="scores for 24"):
        evaluate(data, lambda items: [0.0])


def test_vectorised_blend_is_match_score(tmp_path: Path) -> None:
    data = load_asag(write_quiz(tmp_path / "quiz.tsv"))
    rng = np.random.default_rng(2)
    cosines = rng.uniform(-0.1, 1.0, size=len(data))
    responses = list(data.responses)
    responses[3] = "   "  # the empty-answer rule must hold in the vectorised form too
    features = [match_features(r, ref, q) for q, ref, r in zip(data.questions, data.references, responses, strict=True)]
    params = MatchParams()
    ramps = [params.thresholds[d] for d in sorted(params.thresholds)]
    table = blend_scores(cosines, features, params.lexical_weight, params.question_word_weight, ramps)
    for row, difficulty in enumerate(sorted(params.thresholds)):
        expected = [
            match_score(c, r, ref, q, difficulty=difficulty, params=params)
            for c, q, ref, r in zip(cosines, data.questions, data.references, responses, strict=True)
        ]
        np.testing.assert_allclose(table[row], expected, atol=1e-12)
    assert table[:, 3].tolist() == [0.0] * len(ramps)


def test_cross_validation_recovers_a_planted_blend() -> None:
    # gold is a function of the cosine and the recall: the fit must find it in every fold
    rng = np.random.default_rng(3)
    n_groups, per_group = 4, 30
    words = ["apple", "river", "garden", "violin", "castle", "meadow"]
    features, cosines, gold, groups = [], [], [], []
    for g in range(n_groups):
        for _ in range(per_group):
            reference = " ".join(words)
            kept = [w for w in words if rng.random() < 0.5] or ["nothing"]
            f = match_features(" ".join(kept), reference, None)
            cosine = float(rng.uniform(0.0, 1.0))
            features.append(f)
            cosines.append(cosine)
            gold.append(5 * min(max((0.5 * cosine + 0.5 * f.recall() - 0.2) / 0.4, 0.0), 1.0))
            groups.append(str(g))
    result = cross_validate(
        np.array(cosines), features, np.array(gold), groups, question_word_weights=(0.1,), ramps=[(0.2, 0.6)]
    )
    assert result.pearson == pytest.approx(1.0)
    assert [fold[0] for fold in result.folds] == ["0", "1", "2", "3"]
    for _, fit, value in result.folds:
        assert fit.lexical_weight == pytest.approx(0.5) and (fit.zero_at, fit.one_at) == (0.2, 0.6)
        assert value == pytest.approx(1.0)
    assert result.in_sample[1] == pytest.approx(1.0)


def test_cross_validation_needs_two_groups() -> None:
    features = [match_features("a b", "a b c", None)] * 3
    with pytest.raises(ValueError, match="two groups"):
        cross_validate(np.array([0.1, 0.5, 0.9]), features, np.array([0.0, 2.0, 5.0]), ["x", "x", "x"])


# ------------------------------------------------------------------------------------------------ command line


def test_help_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--data" in capsys.readouterr().out


def test_missing_data_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "mohler_unt_v2.tsv"
    assert main(["--data", str(missing), "--model-dir", str(tmp_path), "--no-build"]) == 2
    captured = capsys.readouterr()
    assert f"data file {missing} not found" in captured.err
    assert captured.out == ""


def test_data_file_without_the_columns_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "other.tsv"
    path.write_text("a\tb\n1\t2\n", encoding="utf-8")
    assert main(["--data", str(path), "--model-dir", str(tmp_path), "--no-build"]) == 2
    assert "missing column(s) question, reference_answer" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_quiz(tmp_path / "quiz.tsv")
    assert main(["--data", str(path), "--model-dir", str(tmp_path / "empty"), "--no-build", "--variant", "fp32"]) == 2
    assert "is missing (fp32)" in capsys.readouterr().err


ROW = re.compile(r"^(fp32|int8)\s+(.+?)\s+(-?\d+\.\d{4})(?:\s+(-?\d+\.\d{4}))?", re.MULTILINE)


def test_command_line_on_a_small_invented_table(
    tmp_path: Path, built: dict[str, ModelFiles], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_quiz(tmp_path / "quiz.tsv")
    code = main(["--data", str(path), "--model-dir", str(model_dir), "--no-build", "--threads", "2", "--folds"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "24 answers, 6 questions, 3 groups" in captured.out
    assert "encoding" in captured.err  # progress goes to stderr
    figures = {(m[1], m[2]): float(m[3]) for m in ROW.finditer(captured.out)}
    for variant in ("fp32", "int8"):
        cosine = figures[(variant, "cosine")]
        scored = figures[(variant, "match_score (defaults, difficulty 2)")]
        cv = figures[(variant, "match_score, leave-one-group-out CV")]
        in_sample = figures[(variant, "match_score, in-sample best of the grid")]
        assert all(-1.0 <= v <= 1.0 for v in (cosine, scored, cv, in_sample))
        # the invented grades follow the reference closely: every method must see it
        assert cosine > 0.5 and scored > 0.7 and cv > 0.5
        assert in_sample >= scored - 1e-4  # the defaults are one point of the grid
    assert captured.out.count("held out") == 6


def test_command_line_single_variant_without_cv(
    tmp_path: Path, built: dict[str, ModelFiles], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_quiz(tmp_path / "quiz.tsv")
    args = ["--data", str(path), "--model-dir", str(model_dir), "--no-build", "--threads", "2", "--quiet"]
    assert main([*args, "--variant", "int8", "--no-cv", "--difficulty", "4"]) == 0
    captured = capsys.readouterr()
    assert "int8    match_score (defaults, difficulty 4)" in captured.out
    assert "fp32" not in captured.out and "CV" not in captured.out
    assert captured.err == ""
    assert main([*args, "--difficulty", "9"]) == 2
    assert "no thresholds for difficulty 9" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ with the model


def test_the_encoder_score_meets_the_design_targets(encoder) -> None:
    """Near-verbatim answer -> 1 at every difficulty, unrelated -> 0, empty -> 0, partial in between."""
    question, reference = "What is your favourite food?", "Spicy ramen with a soft boiled egg."
    answers = [
        "Spicy ramen with a soft-boiled egg",
        "spicy ramen with a soft boiled egg",
        "He likes to go skiing in winter.",
        "The train leaves at nine.",
        "",
        "   ",
        "ramen with egg",
    ]
    items = [(question, reference, a) for a in answers]
    for difficulty in sorted(DEFAULT_THRESHOLDS):
        scores = encoder_score_fn(encoder, difficulty=difficulty)(items)
        assert scores[0] == scores[1] == 1.0, (difficulty, scores)
        assert scores[2] == scores[3] == scores[4] == scores[5] == 0.0, (difficulty, scores)
        assert 0.0 < scores[6] <= 1.0
    easy, hard = (encoder_score_fn(encoder, difficulty=d)(items[-1:])[0] for d in (1, 5))
    assert easy > hard


def test_encoder_score_fn_refuses_an_unknown_difficulty_before_encoding() -> None:
    class NoEncoder:
        def encode(self, texts: list[str]) -> np.ndarray:
            raise AssertionError("must not encode")

    with pytest.raises(ValueError, match="difficulty 8"):
        encoder_score_fn(NoEncoder(), difficulty=8)


def test_asag_data_len() -> None:
    data = AsagData(["q"], ["r"], ["a"], np.array([1.0]), ["1"])
    assert len(data) == 1
