"""Entry point ``apns``: registers the ``apns`` notifier built from ``[plugins.config.apns]``.

An absent or empty table, or ``enabled = false``, registers nothing (iOS devices then get no pushes;
the service logs that no notifier serves the platform). An invalid table stops start-up.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from notifiers.apns.config import CONFIG_NAME, load_config
from notifiers.apns.notifier import ApnsNotifier
from plugins.context import PluginContext
from plugins.hookspecs import hookimpl
from plugins.notifier import Notifier

__all__ = ["build_notifier", "register_notifiers"]

log = structlog.get_logger(__name__)


def build_notifier(context: PluginContext) -> ApnsNotifier | None:
    """The notifier for these settings, or ``None`` when APNs is not configured (opens no connection)."""
    config = load_config(context.config(CONFIG_NAME))
    if config is None:
        log.info("apns notifier not configured; no pushes to its platforms")
        return None
    return ApnsNotifier(config)


@hookimpl
def register_notifiers(register: Callable[[Notifier], None], context: PluginContext) -> None:
    """Register ``apns`` when configured."""
    notifier = build_notifier(context)
    if notifier is not None:
        register(notifier)
