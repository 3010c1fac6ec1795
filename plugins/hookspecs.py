"""Hook specifications: the whole plugin contract, one function per hook.

Hooks are synchronous and cheap; anything slow or async lives on the objects they register
(in the style of datasette, pytest and simonw/llm). A hook implementation may accept any subset of a
hook's arguments, by name.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from plugins.context import PluginContext
from plugins.notifier import Notifier
from plugins.scorer import Scorer

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec", "register_notifiers", "register_scorers"]

PROJECT_NAME = "connection_key"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_scorers(register: Callable[[Scorer], None], context: PluginContext) -> None:
    """Register scoring strategies.

    Called once per process at start-up, after plugins load and before the first request (also by CLI
    commands that score). Call ``register(scorer)`` once per :class:`plugins.scorer.Scorer` the plugin
    provides; return nothing. ``context`` gives the plugin its settings (``context.config(name)``), a
    writable data directory and the shared cache. Build nothing slow here: a scorer that needs a model
    or a connection opens it in ``__aenter__``, which the service awaits before serving.

    Names must be unique across all plugins (a duplicate stops start-up). Which scorer handles which
    question kind is chosen by the ``[scoring.routes]`` settings, not by the plugin; a plugin may
    register several scorers (e.g. variants to A/B test).
    """


@hookspec
def register_notifiers(register: Callable[[Notifier], None], context: PluginContext) -> None:
    """Register push-notification channels (FCM, APNs, ...).

    Called once per process at start-up, after the plugins of the ``connection_key.notifiers``
    entry-point group load and before the first event is handled. Call ``register(notifier)`` once per
    :class:`plugins.notifier.Notifier` the plugin provides; return nothing. ``context`` gives the plugin
    its settings (``context.config(name)``, the ``[plugins.config.<name>]`` table), a writable data
    directory and the environment. A plugin whose settings table is absent or empty registers nothing;
    an invalid table should raise with a message naming the key, which stops start-up. Build nothing
    slow here: a notifier opens its HTTP client in ``__aenter__``, which the service awaits at start-up.

    Notifier names must be unique, and so must the platforms they serve (``"android"``, ``"ios"``): each
    device platform is routed to exactly one notifier, and a clash stops start-up.
    """
