"""Plugin manager: entry-point loading, the `enabled` filter, and scorer collection checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pluggy
import pytest

from plugins.hookspecs import hookimpl
from plugins.manager import PluginError, build_plugin_manager, collect_scorers
from plugins.scorer import Scorer, ScoreRequest, ScoreResult
from scorers.rule import ChoiceScorer, FreeResponseRuleScorer


class EchoScorer:
    version = "0.1"
    kinds = frozenset({"FREE_RESPONSE"})
    deterministic = True

    def __init__(self, name: str) -> None:
        self.name = name

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return [ScoreResult(r.question_id, 1.0) for r in batch]


class ThrowawayPlugin:
    """Registers whatever it is given, like a third-party plugin would."""

    def __init__(self, *scorers: object) -> None:
        self.scorers = scorers

    @hookimpl
    def register_scorers(self, register: Callable[[Scorer], None]) -> None:
        for scorer in self.scorers:
            register(scorer)  # type: ignore[arg-type]


@pytest.fixture
def pm() -> Iterator[pluggy.PluginManager]:
    manager = build_plugin_manager()
    yield manager


@pytest.fixture
def register_plugin(pm: pluggy.PluginManager) -> Iterator[Callable[[object], None]]:
    added: list[object] = []

    def add(plugin: object) -> None:
        pm.register(plugin, name=f"throwaway-{len(added)}")
        added.append(plugin)

    yield add
    for plugin in added:
        pm.unregister(plugin)


def test_built_in_rule_plugin_loads_from_its_entry_point(pm: pluggy.PluginManager) -> None:
    assert pm.has_plugin("rule")
    scorers = collect_scorers(pm)
    # Every built-in plugin loads through its entry point, like a third-party one.
    assert {"rule", "embedding", "llm_rubric"} <= {name for name, _ in pm.list_name_plugin()}
    assert {"rule.choice", "rule.free_response", "embedding.similarity", "embedding.rubric", "llm.rubric"} <= set(
        scorers
    )
    assert isinstance(scorers["rule.choice"], ChoiceScorer)
    assert isinstance(scorers["rule.free_response"], FreeResponseRuleScorer)


def test_enabled_limits_loading() -> None:
    assert build_plugin_manager(["rule"]).has_plugin("rule")
    none = build_plugin_manager([])
    assert not none.has_plugin("rule")
    assert collect_scorers(none) == {}


def test_enabling_an_uninstalled_plugin_is_an_error() -> None:
    with pytest.raises(PluginError, match="plugins not installed: nope"):
        build_plugin_manager(["nope"])
    with pytest.raises(PluginError, match="nope, zzz"):
        build_plugin_manager(["rule", "zzz", "nope"])


def test_a_throwaway_plugin_adds_its_scorer(pm: pluggy.PluginManager, register_plugin) -> None:
    before = set(collect_scorers(pm))
    register_plugin(ThrowawayPlugin(EchoScorer("test.echo")))
    assert set(collect_scorers(pm)) == before | {"test.echo"}


def test_throwaway_plugins_are_gone_after_unregistering(pm: pluggy.PluginManager) -> None:
    plugin = ThrowawayPlugin(EchoScorer("test.echo"))
    pm.register(plugin)
    assert "test.echo" in collect_scorers(pm)
    pm.unregister(plugin)
    assert "test.echo" not in collect_scorers(pm)


def test_duplicate_scorer_names_are_refused(pm: pluggy.PluginManager, register_plugin) -> None:
    register_plugin(ThrowawayPlugin(EchoScorer("rule.choice")))
    with pytest.raises(PluginError, match="two plugins register a scorer named 'rule.choice'"):
        collect_scorers(pm)


def test_duplicate_names_within_one_plugin_are_refused(pm: pluggy.PluginManager, register_plugin) -> None:
    register_plugin(ThrowawayPlugin(EchoScorer("test.twice"), EchoScorer("test.twice")))
    with pytest.raises(PluginError, match="test.twice"):
        collect_scorers(pm)


class MissingScore:
    name = "test.no_score"
    version = "1"
    kinds = frozenset({"CONSENT"})


class MissingVersion:
    name = "test.no_version"
    kinds = frozenset({"CONSENT"})

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return []


@pytest.mark.parametrize("bad", [object(), "rule.choice", MissingScore(), MissingVersion()])
def test_objects_that_are_not_scorers_are_refused(pm: pluggy.PluginManager, register_plugin, bad: object) -> None:
    register_plugin(ThrowawayPlugin(bad))
    with pytest.raises(PluginError, match="does not implement the Scorer protocol"):
        collect_scorers(pm)


def test_unknown_hooks_fail_at_build_time() -> None:
    class Typo:
        @hookimpl
        def register_scorer(self, register: object) -> None:  # missing "s"
            raise AssertionError("never called")

    manager = build_plugin_manager([])
    manager.register(Typo())
    with pytest.raises(pluggy.PluginValidationError):
        manager.check_pending()
