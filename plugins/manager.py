"""The plugin manager: one per process, loaded from every entry-point group the project defines.

Built-in plugins (``scorers/``, ``notifiers/``) and third-party ones load the same way: through an entry
point. A plugin may implement any of the hooks in :mod:`plugins.hookspecs`; its entry-point group only
decides which setting enables it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

import pluggy

from plugins import hookspecs
from plugins.context import PluginContext
from plugins.notifier import Notifier
from plugins.scorer import Scorer

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENTRY_POINT_GROUPS",
    "NOTIFIERS_GROUP",
    "SCORERS_GROUP",
    "PluginError",
    "build_plugin_manager",
    "collect_notifiers",
    "collect_scorers",
    "load_entry_points",
    "new_plugin_manager",
]

SCORERS_GROUP = "connection_key.scorers"
NOTIFIERS_GROUP = "connection_key.notifiers"
ENTRY_POINT_GROUPS: Mapping[str, str] = {
    SCORERS_GROUP: "scorer plugin",
    NOTIFIERS_GROUP: "notifier plugin",
}
"""Every entry-point group the project loads plugins from, with what error messages call its plugins."""
ENTRY_POINT_GROUP = SCORERS_GROUP
"""The scorer group under its older name, for code that imports it."""


class PluginError(RuntimeError):
    """A plugin could not be loaded or registered something invalid."""


def new_plugin_manager() -> pluggy.PluginManager:
    """A manager that knows every hook in :mod:`plugins.hookspecs` and holds no plugin yet."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def load_entry_points(pm: pluggy.PluginManager, enabled: Mapping[str, Iterable[str] | None]) -> None:
    """Register the plugins of every group in :data:`ENTRY_POINT_GROUPS` on ``pm``, by entry-point name.

    ``enabled`` maps a group to the entry-point names to load from it; a group that is absent, or maps
    to ``None``, loads every installed plugin of that group. Naming a plugin that is not installed is an
    error, so a typo cannot silently drop a scorer or a push channel. A module named by entry points in
    both groups is registered once. Unknown hooks are caught here (``check_pending``).
    """
    unknown = set(enabled) - set(ENTRY_POINT_GROUPS)
    if unknown:
        raise PluginError(f"unknown entry-point groups: {', '.join(sorted(unknown))}")
    chosen: list[tuple[str, str, EntryPoint]] = []  # checked for every group before anything is imported
    for group, what in ENTRY_POINT_GROUPS.items():
        available = {ep.name: ep for ep in entry_points(group=group)}
        names = enabled.get(group)
        wanted = set(available) if names is None else set(names)
        missing = wanted - set(available)
        if missing:
            raise PluginError(f"{what}s not installed: {', '.join(sorted(missing))} (entry-point group {group})")
        chosen += [(what, group, available[name]) for name in sorted(wanted)]
    for what, group, point in chosen:
        try:
            plugin = point.load()
        except Exception as exc:
            raise PluginError(f"{what} {point.name!r} failed to import: {exc}") from exc
        if pm.is_registered(plugin):
            continue
        if pm.has_plugin(point.name):
            raise PluginError(f"two plugins are named {point.name!r}; the {what} from {group} clashes with another")
        pm.register(plugin, name=point.name)
    pm.check_pending()


def build_plugin_manager(
    enabled: Iterable[str] | None = None, *, notifiers: Iterable[str] | None = None
) -> pluggy.PluginManager:
    """The process's plugin manager, with its plugins loaded from their entry points.

    ``enabled`` selects from ``connection_key.scorers`` (the ``plugins.enabled`` setting) and
    ``notifiers`` from ``connection_key.notifiers`` (``notifications.notifiers``); ``None`` loads every
    installed plugin of that group, an empty list none.
    """
    pm = new_plugin_manager()
    load_entry_points(pm, {SCORERS_GROUP: enabled, NOTIFIERS_GROUP: notifiers})
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


def collect_notifiers(pm: pluggy.PluginManager, context: PluginContext | None = None) -> dict[str, Notifier]:
    """Call ``register_notifiers`` on every plugin and return notifiers by name.

    Raises :class:`PluginError` when something registered is not a ``Notifier``, serves no platform, or
    shares a name or a platform with another notifier: each device platform goes to exactly one.
    """
    notifiers: dict[str, Notifier] = {}
    owners: dict[str, str] = {}

    def register(notifier: Notifier) -> None:
        if not isinstance(notifier, Notifier):
            raise PluginError(f"{notifier!r} does not implement the Notifier protocol")
        if notifier.name in notifiers:
            raise PluginError(f"two plugins register a notifier named {notifier.name!r}")
        if not notifier.platforms:
            raise PluginError(f"notifier {notifier.name!r} serves no platform")
        for platform in notifier.platforms:
            if platform in owners:
                raise PluginError(
                    f"notifiers {owners[platform]!r} and {notifier.name!r} both serve platform {platform!r}"
                )
        owners.update(dict.fromkeys(notifier.platforms, notifier.name))
        notifiers[notifier.name] = notifier

    pm.hook.register_notifiers(register=register, context=context or PluginContext())
    return notifiers
