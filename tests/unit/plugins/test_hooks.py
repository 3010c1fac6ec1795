"""One test per hook, named ``test_hook_<hook>`` (the meta-test in test_hookspecs_documented.py asks for
it): a throwaway plugin registered in a fixture implements the hook, and the test checks what the hook
does in the one plugin manager the service builds."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pluggy
import pytest

from plugins import hookimpl
from plugins.context import PluginContext
from plugins.manager import build_plugin_manager, collect_notifiers, collect_scorers
from plugins.notifier import Notifier, PushMessage, PushOutcome, PushStatus
from plugins.scorer import Scorer, ScoreRequest, ScoreResult


class ConstantScorer:
    version = "0.1.0"
    kinds = frozenset({"COMPREHENSION"})
    deterministic = True

    def __init__(self, name: str, value: float) -> None:
        self.name = name
        self.value = value

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return [ScoreResult(r.question_id, self.value) for r in batch]


class EchoNotifier:
    def __init__(self, name: str, *platforms: str) -> None:
        self.name = name
        self.platforms = frozenset(platforms)

    async def send(self, batch: Sequence[PushMessage]) -> list[PushOutcome]:
        return [PushOutcome(token=m.token, status=PushStatus.DELIVERED) for m in batch]


class ScorerPlugin:
    """Registers one scorer built from its settings table, as a third-party plugin does."""

    def __init__(self) -> None:
        self.contexts: list[PluginContext] = []

    @hookimpl
    def register_scorers(self, register: Callable[[Scorer], None], context: PluginContext) -> None:
        self.contexts.append(context)
        register(ConstantScorer("throwaway.constant", float(context.config("throwaway")["value"])))


class NotifierPlugin:
    """Registers a notifier only when its settings table is filled in, as the built-ins do."""

    def __init__(self) -> None:
        self.contexts: list[PluginContext] = []

    @hookimpl
    def register_notifiers(self, register: Callable[[Notifier], None], context: PluginContext) -> None:
        self.contexts.append(context)
        if platforms := context.config("throwaway").get("platforms"):
            register(EchoNotifier("throwaway", *platforms))


@pytest.fixture
def pm() -> pluggy.PluginManager:
    """The service's manager with every installed plugin loaded from its entry points."""
    return build_plugin_manager()


@pytest.fixture
def scorer_plugin(pm: pluggy.PluginManager) -> Iterator[ScorerPlugin]:
    plugin = ScorerPlugin()
    pm.register(plugin, name="throwaway-scorers")
    yield plugin
    pm.unregister(plugin)
    assert "throwaway.constant" not in collect_scorers(pm, _context({"value": 0.5}))


@pytest.fixture
def notifier_plugin(pm: pluggy.PluginManager) -> Iterator[NotifierPlugin]:
    plugin = NotifierPlugin()
    pm.register(plugin, name="throwaway-notifiers")
    yield plugin
    pm.unregister(plugin)
    assert "throwaway" not in collect_notifiers(pm, _context({"platforms": ["web"]}))


def _context(table: dict[str, object]) -> PluginContext:
    return PluginContext(settings={"throwaway": table}, data_dir=Path("var"), environment="test")


@pytest.mark.asyncio
async def test_hook_register_scorers(pm: pluggy.PluginManager, scorer_plugin: ScorerPlugin) -> None:
    context = _context({"value": 0.75})
    scorers = collect_scorers(pm, context)
    assert scorer_plugin.contexts == [context], "called once per collection, with the service's context"
    assert isinstance(scorers["throwaway.constant"], ConstantScorer)
    assert {"rule.choice", "throwaway.constant"} <= set(scorers), "beside the installed plugins' scorers"
    request = ScoreRequest(question_id="q1", kind="COMPREHENSION", prompt="p", response="r")
    assert await scorers["throwaway.constant"].score([request]) == [ScoreResult("q1", 0.75)]
    assert "throwaway" not in collect_notifiers(pm, context), "a scorer plugin registers no notifier"


def test_hook_register_notifiers(pm: pluggy.PluginManager, notifier_plugin: NotifierPlugin) -> None:
    assert collect_notifiers(pm, _context({})) == {}, "an empty settings table registers nothing"
    context = _context({"platforms": ["web"]})
    notifiers = collect_notifiers(pm, context)
    assert notifier_plugin.contexts[-1] is context
    assert list(notifiers) == ["throwaway"], "the built-ins register nothing without their tables"
    assert notifiers["throwaway"].platforms == {"web"}
    assert isinstance(notifiers["throwaway"], Notifier)
    assert "throwaway.constant" not in collect_scorers(pm, context), "a notifier plugin registers no scorer"
