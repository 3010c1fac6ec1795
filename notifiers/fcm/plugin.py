"""Entry point ``fcm``: registers the ``fcm`` notifier built from ``[plugins.config.fcm]``.

An absent or empty table, or ``enabled = false``, registers nothing (Android devices then get no
pushes; the service logs that no notifier serves the platform). An invalid table stops start-up.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from notifiers.fcm.config import CONFIG_NAME, load_config
from notifiers.fcm.notifier import FcmNotifier
from plugins.context import PluginContext
from plugins.hookspecs import hookimpl
from plugins.notifier import Notifier

__all__ = ["build_notifier", "register_notifiers"]

log = structlog.get_logger(__name__)


def build_notifier(context: PluginContext) -> FcmNotifier | None:
    """The notifier for these settings, or ``None`` when FCM is not configured (opens no connection)."""
    loaded = load_config(context.config(CONFIG_NAME))
    if loaded is None:
        log.info("fcm notifier not configured; no pushes to its platforms")
        return None
    return FcmNotifier(*loaded)


@hookimpl
def register_notifiers(register: Callable[[Notifier], None], context: PluginContext) -> None:
    """Register ``fcm`` when configured."""
    notifier = build_notifier(context)
    if notifier is not None:
        register(notifier)
