"""Plugin manager: built-ins and third-party plugins load the same way, through entry points."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import entry_points

import pluggy

from plugins import hookspecs
from plugins.context import PluginContext
from plugins.scorer import Scorer

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "build_plugin_manager", "collect_scorers"]

ENTRY_POINT_GROUP = "connection_key.scorers"


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered something invalid."""


def build_plugin_manager(
    enabled: Iterable[str] | None = None, *, group: str = ENTRY_POINT_GROUP, what: str = "plugin"
) -> pluggy.PluginManager:
    """Load plugins from an entry-point group (``connection_key.scorers`` unless told otherwise).

    ``enabled`` limits loading to those entry-point names (``None`` loads all); naming a plugin that is
    not installed is an error, so a typo cannot silently drop a scorer. ``what`` names the plugins in
    error messages.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    available = {ep.name: ep for ep in entry_points(group=group)}
    wanted = set(available) if enabled is None else set(enabled)
    missing = wanted - set(available)
    if missing:
        raise PluginError(f"{what}s not installed: {', '.join(sorted(missing))}")
    for name in sorted(wanted):
        try:
            plugin = available[name].load()
        except Exception as exc:
            raise PluginError(f"{what} {name!r} failed to import: {exc}") from exc
        pm.register(plugin, name=name)
    pm.check_pending()
    return pm


def collect_scorers(pm: pluggy.PluginManager, context: PluginContext | None = None) -> dict[str, Scorer]:
    """Call ``register_scorers`` on every plugin and return scorers by name; duplicates are an error."""
    scorers: dict[str, Scorer] = {}

    def register(scorer: Scorer) -> None:
        if not isinstance(scorer, Scorer):
            raise PluginError(f"{scorer!r} does not implement the Scorer protocol")
        if scorer.name in scorers:
            raise PluginError(f"two plugins register a scorer named {scorer.name!r}")
        scorers[scorer.name] = scorer

    pm.hook.register_scorers(register=register, context=context or PluginContext())
    return scorers
