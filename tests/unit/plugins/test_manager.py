"""The one plugin manager: loading every entry-point group, what each setting selects, and the checks
``collect_scorers`` makes."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import EntryPoint

import pluggy
import pytest

import plugins.manager
from plugins import hookimpl
from plugins.manager import (
    ENTRY_POINT_GROUPS,
    NOTIFIERS_GROUP,
    SCORERS_GROUP,
    PluginError,
    build_plugin_manager,
    collect_notifiers,
    collect_scorers,
    load_entry_points,
    new_plugin_manager,
)
from plugins.notifier import PushMessage, PushOutcome, PushStatus
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
    with pytest.raises(PluginError, match="scorer plugins not installed: nope"):
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


# -- one manager over every entry-point group ------------------------------------------------------------


class EchoNotifier:
    name = "test.push"
    platforms = frozenset({"web"})

    async def send(self, batch: Sequence[PushMessage]) -> list[PushOutcome]:
        return [PushOutcome(token=m.token, status=PushStatus.DELIVERED) for m in batch]


def _module(name: str, *, scorer: str | None = None, notifier: bool = False) -> types.ModuleType:
    """A plugin module, as an entry point would name it."""
    module = types.ModuleType(name)
    if scorer is not None:

        @hookimpl
        def register_scorers(register: Callable[[Scorer], None]) -> None:
            register(EchoScorer(scorer))

        module.register_scorers = register_scorers  # type: ignore[attr-defined]
    if notifier:

        @hookimpl
        def register_notifiers(register: Callable[[object], None]) -> None:
            register(EchoNotifier())

        module.register_notifiers = register_notifiers  # type: ignore[attr-defined]
    return module


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Replaces the installed entry points with the given ``(group, name, module)`` ones."""

    def install(*points: tuple[str, str, types.ModuleType | str]) -> None:
        found: dict[str, list[EntryPoint]] = {}
        for group, name, module in points:
            value = module if isinstance(module, str) else module.__name__
            if not isinstance(module, str):
                monkeypatch.setitem(sys.modules, module.__name__, module)
            found.setdefault(group, []).append(EntryPoint(name=name, value=value, group=group))
        monkeypatch.setattr(plugins.manager, "entry_points", lambda group: found.get(group, []))

    return install


def test_the_project_defines_two_groups_under_their_published_names() -> None:
    assert set(ENTRY_POINT_GROUPS) == {"connection_key.scorers", "connection_key.notifiers"}
    assert (SCORERS_GROUP, NOTIFIERS_GROUP) == ("connection_key.scorers", "connection_key.notifiers")


def test_one_manager_holds_the_plugins_of_every_group(installed: Callable[..., None]) -> None:
    installed(
        (SCORERS_GROUP, "grader", _module("ck_test_grader", scorer="grader.echo")),
        (NOTIFIERS_GROUP, "push", _module("ck_test_push", notifier=True)),
    )
    pm = build_plugin_manager()
    assert {name for name, _ in pm.list_name_plugin()} == {"grader", "push"}
    assert set(collect_scorers(pm)) == {"grader.echo"}
    assert set(collect_notifiers(pm)) == {"test.push"}


def test_each_setting_selects_from_its_own_group(installed: Callable[..., None]) -> None:
    installed(
        (SCORERS_GROUP, "grader", _module("ck_test_grader", scorer="grader.echo")),
        (SCORERS_GROUP, "other", _module("ck_test_other", scorer="other.echo")),
        (NOTIFIERS_GROUP, "push", _module("ck_test_push", notifier=True)),
    )
    scorers_only = build_plugin_manager(["grader"], notifiers=[])  # plugins.enabled, notifications.notifiers
    assert {name for name, _ in scorers_only.list_name_plugin()} == {"grader"}
    notifiers_only = build_plugin_manager([], notifiers=["push"])
    assert {name for name, _ in notifiers_only.list_name_plugin()} == {"push"}
    assert {name for name, _ in build_plugin_manager(["other"]).list_name_plugin()} == {"other", "push"}
    with pytest.raises(PluginError, match=r"scorer plugins not installed: push \(entry-point group connection_key"):
        build_plugin_manager(["push"])  # a notifier plugin is not enabled by plugins.enabled
    with pytest.raises(PluginError, match="notifier plugins not installed: grader"):
        build_plugin_manager(notifiers=["grader"])


def test_a_module_in_both_groups_loads_once_and_serves_both_hooks(installed: Callable[..., None]) -> None:
    both = _module("ck_test_both", scorer="both.echo", notifier=True)
    installed((SCORERS_GROUP, "both", both), (NOTIFIERS_GROUP, "both_push", both))
    pm = build_plugin_manager()
    assert pm.get_plugins() == {both}
    assert set(collect_scorers(pm)) == {"both.echo"} and set(collect_notifiers(pm)) == {"test.push"}


def test_two_modules_under_one_name_are_refused(installed: Callable[..., None]) -> None:
    installed(
        (SCORERS_GROUP, "same", _module("ck_test_same_scorer", scorer="same.echo")),
        (NOTIFIERS_GROUP, "same", _module("ck_test_same_push", notifier=True)),
    )
    with pytest.raises(PluginError, match="two plugins are named 'same'"):
        build_plugin_manager()


def test_a_plugin_that_fails_to_import_stops_loading(installed: Callable[..., None]) -> None:
    installed((NOTIFIERS_GROUP, "broken", "ck_test_no_such_module"))
    with pytest.raises(PluginError, match="notifier plugin 'broken' failed to import"):
        build_plugin_manager([])


def test_the_loader_refuses_groups_the_project_does_not_define() -> None:
    with pytest.raises(PluginError, match="unknown entry-point groups: connection_key.scorer"):
        load_entry_points(new_plugin_manager(), {"connection_key.scorer": None})
