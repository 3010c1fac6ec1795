"""The example third-party plugin installs with pip, loads through its entry point, scores, and passes
its own conformance tests, exactly as an outside author's package would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import distribution
from pathlib import Path

import pytest

from plugins.conformance import ScorerConformance
from plugins.context import PluginContext
from plugins.manager import build_plugin_manager, collect_scorers
from plugins.scorer import ScoreRequest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "plugins" / "examples" / "ck-scorer-keywords"
PACKAGE = "ck_scorer_keywords"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a copy of the example's source, the directory pip installed it into).

    pip builds in the source tree (build/, *.egg-info), so it builds a copy and the repository stays clean.
    """
    work = tmp_path_factory.mktemp("example-plugin")
    source, target = work / "source", work / "site"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
    )
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--disable-pip-version-check", "--no-input", "--quiet", "--target", str(target), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (
        "pip could not install the example plugin (with --no-build-isolation the environment needs "
        f"setuptools>=70.1, or setuptools with the wheel package):\n{done.stdout}\n{done.stderr}"
    )
    return source, target


@pytest.fixture
def on_path(installed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The install directory on sys.path (importlib.metadata finds its dist-info there), then gone again."""
    _, target = installed
    monkeypatch.syspath_prepend(str(target))
    yield target
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def test_installed_distribution_declares_the_entry_point(on_path: Path) -> None:
    dist = distribution("ck-scorer-keywords")
    assert dist.version == "0.1.0"
    points = [ep for ep in dist.entry_points if ep.group == "connection_key.scorers"]
    assert [(ep.name, ep.value) for ep in points] == [("keywords", PACKAGE)]


@pytest.mark.asyncio
async def test_enabled_plugin_registers_and_scores(on_path: Path) -> None:
    pm = build_plugin_manager(["keywords"])
    assert pm.has_plugin("keywords")
    context = PluginContext(settings={"keywords": {"min_word_length": 4}}, environment="test")
    scorers = collect_scorers(pm, context)
    assert set(scorers) == {"keywords.overlap"}
    scorer = scorers["keywords.overlap"]
    assert Path(sys.modules[type(scorer).__module__].__file__ or "").is_relative_to(on_path)
    assert scorer.describe()["min_word_length"] == 4  # read from context.config("keywords")

    def ask(qid: str, response: str) -> ScoreRequest:
        return ScoreRequest(
            qid, "COMPREHENSION", "Ada's ideal Sunday?", response, answer_key="Road trips, no fixed plan"
        )

    results = await scorer.score([ask("all", "no plan, just road trips"), ask("half", "a fixed plan"), ask("none", "")])
    assert {r.question_id: r.score for r in results} == {"all": 0.75, "half": 0.5, "none": 0.0}
    assert all(r.feedback is None or "road" not in r.feedback.casefold() for r in results)


def test_example_passes_its_conformance_tests(installed: tuple[Path, Path]) -> None:
    source, target = installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"the example's tests failed:\n{done.stdout}\n{done.stderr}"
    summary = done.stdout.strip().splitlines()[-1]
    passed = re.match(r"(\d+) passed in ", summary)
    assert passed, f"expected only passes: {summary}"
    assert int(passed.group(1)) > len([name for name in dir(ScorerConformance) if name.startswith("test_")])
