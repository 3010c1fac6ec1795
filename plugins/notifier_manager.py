"""Notifier names under their older import path; the manager and the loader are :mod:`plugins.manager`."""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from plugins.manager import NOTIFIERS_GROUP, build_plugin_manager, collect_notifiers

__all__ = ["NOTIFIER_ENTRY_POINT_GROUP", "build_notifier_manager", "collect_notifiers"]

NOTIFIER_ENTRY_POINT_GROUP = NOTIFIERS_GROUP


def build_notifier_manager(enabled: Iterable[str] | None = None) -> pluggy.PluginManager:
    """:func:`plugins.manager.build_plugin_manager` loading notifier plugins only (``enabled`` of them)."""
    return build_plugin_manager([], notifiers=enabled)
