"""Meta-test, as datasette does: every hook is documented in its docstring and in the plugin author
guide (plugins/README.md), and a test function named ``test_hook_<hook>`` exists under ``tests/``."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from plugins import hookspecs

ROOT = Path(__file__).resolve().parents[3]
TESTS = ROOT / "tests"
GUIDE = ROOT / "plugins" / "README.md"
HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if getattr(fn, f"{hookspecs.PROJECT_NAME}_spec", None) is not None
)


def _test_function_names(root: Path = TESTS) -> set[str]:
    """Names of the functions and methods defined in the test modules (``test_*.py``) under ``root``,
    read by AST: a comment, a string or a call that mentions a name does not count."""
    names: set[str] = set()
    for path in root.rglob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names.update(node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef))
    return names


def test_hooks_are_found() -> None:
    assert HOOKS, "no hookspecs found in plugins/hookspecs.py"
    assert set(HOOKS) <= set(hookspecs.__all__), "every hook is exported"


@pytest.mark.parametrize("hook", HOOKS)
def test_docstring_says_what_when_and_how(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc.split()) >= 30, f"{hook}: the docstring is too short to be a contract"
    assert re.search(r"\bcalled\b", doc, re.IGNORECASE), f"{hook}: say when it is called"
    assert re.search(r"\breturns?\b", doc, re.IGNORECASE), f"{hook}: say what it returns"
    for parameter in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert f"``{parameter}``" in doc, f"{hook}: describe the argument {parameter!r}"
    assert re.search(rf"Example::\n\n\s+@hookimpl\n\s+def {hook}\(", doc), f"{hook}: give an example implementation"


@pytest.mark.parametrize("hook", HOOKS)
def test_listed_in_the_plugin_guide(hook: str) -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    parameters = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert re.search(rf"^#+ `{hook}\({re.escape(parameters)}\)`$", guide, re.MULTILINE), (
        f"plugins/README.md needs a heading `{hook}({parameters})` documenting the hook"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_has_a_test_named_for_it(hook: str) -> None:
    assert f"test_hook_{hook}" in _test_function_names(), (
        f"write a test function named test_hook_{hook} under tests/ that registers a throwaway plugin "
        "implementing the hook and checks what the hook does"
    )


def test_the_name_rule_reads_definitions_not_text(tmp_path: Path) -> None:
    (tmp_path / "test_mentions.py").write_text(
        '"""test_hook_register_scorers"""\n# def test_hook_register_notifiers\nx = "test_hook_other"\n'
        "test_hook_called()\nclass TestX:\n    async def test_hook_in_a_class(self):\n        pass\n",
        encoding="utf-8",
    )
    (tmp_path / "helpers.py").write_text("def test_hook_not_in_a_test_module():\n    pass\n", encoding="utf-8")
    assert _test_function_names(tmp_path) == {"test_hook_in_a_class"}
