"""Meta-test, as datasette does: every hook is documented and exercised by some test."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from plugins import hookspecs

TESTS = Path(__file__).resolve().parents[2]
HOOKS = [
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, f"{hookspecs.PROJECT_NAME}_spec")
]


def test_there_are_hooks() -> None:
    assert "register_scorers" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Called" in doc, f"{hook}: say when it is called"
    assert "return" in doc.lower(), f"{hook}: say what it returns"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    this = Path(__file__).resolve()
    users = [p for p in TESTS.rglob("test_*.py") if p != this and hook in p.read_text(encoding="utf-8")]
    assert users, f"no test exercises hook {hook}"
