"""The STS-benchmark reader, the Spearman implementation and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scorers.embedding.onnx_build import ModelFiles
from scorers.embedding.sts_eval import load_sts, main, spearman

# Real STS-b quirks: an unbalanced quote, trailing tab-separated notes on some lines, CRLF.
SAMPLE = (
    "main-captions\tMSRvid\t2012test\t0024\t2.500\tA girl is styling her hair.\tA girl is brushing her hair.\n"
    'main-news\theadlines\t2013\t0001\t4.800\t"Obama says he\'s "confident\tObama: I am confident.\n'
    "main-forums\tdeft-forum\t2014\t0009\t0.200\tThe cat sat on the mat.\tStocks fell on Monday.\tsource note\textra\n"
    "main-captions\tMSRvid\t2012test\t0033\t3.600\tA group of men play soccer on the beach.\t"
    "A group of boys are playing soccer on the beach.\r\n"
    "\n"
)


def test_reader_splits_on_tabs_and_ignores_quotes_and_trailing_fields(tmp_path: Path) -> None:
    path = tmp_path / "sts.csv"
    path.write_text(SAMPLE, encoding="utf-8")
    pairs = load_sts(path)
    assert len(pairs) == 4
    np.testing.assert_allclose(pairs.gold, [2.5, 4.8, 0.2, 3.6])
    assert pairs.first[1] == '"Obama says he\'s "confident'
    assert pairs.second[1] == "Obama: I am confident."
    assert pairs.second[2] == "Stocks fell on Monday."
    assert pairs.second[3] == "A group of boys are playing soccer on the beach."


def test_reader_rejects_short_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a\tb\tc\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least 7"):
        load_sts(path)


def test_spearman_with_ties_matches_the_textbook_values() -> None:
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(size=200)
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # no ties: Pearson of ranks
    assert spearman(a, b) == pytest.approx(np.corrcoef(ranks_a, ranks_b)[0, 1])
    try:
        from scipy.stats import spearmanr
    except ImportError:
        return
    ties = rng.integers(0, 5, size=300)
    other = ties + rng.integers(0, 3, size=300)
    assert spearman(ties, other) == pytest.approx(spearmanr(ties, other).statistic)


def test_help_runs() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_command_line_on_a_small_file(
    tmp_path: Path, built: dict[str, ModelFiles], model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sts.csv"
    path.write_text(SAMPLE, encoding="utf-8")
    code = main(
        ["--data", str(path), "--model-dir", str(model_dir), "--no-build", "--threads", "2", "--min-spearman", "0"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "fp32  Spearman x100 =" in out
    assert "int8  Spearman x100 =" in out
    assert "max |delta|" in out
