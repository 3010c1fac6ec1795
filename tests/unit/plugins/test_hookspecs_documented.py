"""Meta-test, as datasette does: every hook is documented in its docstring and in the plugin author
guide (plugins/README.md), and some test other than the meta-tests exercises it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from plugins import hookspecs

ROOT = Path(__file__).resolve().parents[3]
TESTS = ROOT / "tests"
GUIDE = ROOT / "plugins" / "README.md"
META_TESTS = {Path(__file__).resolve(), TESTS / "unit" / "plugins" / "test_hookspecs.py"}
HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if getattr(fn, f"{hookspecs.PROJECT_NAME}_spec", None) is not None
)


def test_hooks_are_found() -> None:
    assert HOOKS, "no hookspecs found in plugins/hookspecs.py"
    assert set(HOOKS) <= set(hookspecs.__all__), "every hook is exported"


@pytest.mark.parametrize("hook", HOOKS)
def test_docstring_says_when_it_is_called_and_what_it_returns(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc.split()) >= 30, f"{hook}: the docstring is too short to be a contract"
    assert re.search(r"\bcalled\b", doc, re.IGNORECASE), f"{hook}: say when it is called"
    assert re.search(r"\breturns?\b", doc, re.IGNORECASE), f"{hook}: say what it returns"
    for parameter in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert parameter in doc, f"{hook}: describe the argument {parameter!r}"


@pytest.mark.parametrize("hook", HOOKS)
def test_listed_in_the_plugin_guide(hook: str) -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    parameters = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert re.search(rf"^#+ `{hook}\({re.escape(parameters)}\)`$", guide, re.MULTILINE), (
        f"plugins/README.md needs a heading `{hook}({parameters})` documenting the hook"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_exercised_by_a_test(hook: str) -> None:
    users = [
        path.relative_to(ROOT)
        for path in TESTS.rglob("test_*.py")
        if path.resolve() not in META_TESTS and re.search(rf"\b{hook}\b", path.read_text(encoding="utf-8"))
    ]
    assert users, f"no test (other than the meta-tests) mentions hook {hook}"
