"""Notifier plugins load like scorer plugins, from their own entry-point group ``connection_key.notifiers``."""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from plugins.context import PluginContext
from plugins.manager import PluginError, build_plugin_manager
from plugins.notifier import Notifier

__all__ = ["NOTIFIER_ENTRY_POINT_GROUP", "build_notifier_manager", "collect_notifiers"]

NOTIFIER_ENTRY_POINT_GROUP = "connection_key.notifiers"


def build_notifier_manager(
    enabled: Iterable[str] | None = None, *, group: str = NOTIFIER_ENTRY_POINT_GROUP
) -> pluggy.PluginManager:
    """Load plugins from the ``connection_key.notifiers`` entry-point group.

    ``enabled`` limits loading to those entry-point names (``None`` loads all installed); naming one that
    is not installed is an error, so a typo cannot silently drop a push channel.
    """
    return build_plugin_manager(enabled, group=group, what="notifier plugin")


def collect_notifiers(pm: pluggy.PluginManager, context: PluginContext | None = None) -> dict[str, Notifier]:
    """Call ``register_notifiers`` on every plugin and return notifiers by name.

    Raises :class:`plugins.manager.PluginError` when something registered is not a ``Notifier``, serves
    no platform, or shares a name or a platform with another notifier.
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
