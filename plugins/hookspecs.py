"""Hook specifications: the whole plugin contract, one function per hook.

Hooks are synchronous and cheap; anything slow or async lives on the objects they register (in the
style of datasette, pytest and simonw/llm). A hook implementation may accept any subset of a hook's
arguments, by name. Every plugin loads into one manager (:func:`plugins.manager.build_plugin_manager`),
so one plugin module may implement several hooks.
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
    """Register scoring strategies: the objects that score quiz answers.

    ``register``
        Call ``register(scorer)`` once per :class:`plugins.scorer.Scorer` the plugin provides. Names
        must be unique across all plugins: a duplicate, or an object that is not a ``Scorer``, raises
        :class:`plugins.manager.PluginError` and stops start-up.
    ``context``
        A :class:`plugins.context.PluginContext`: the plugin's settings (``context.config(name)``, the
        ``[plugins.config.<name>]`` table), a writable data directory, the environment and the shared
        cache.

    Called once per process at start-up, after plugins load and before the first request (also by CLI
    commands that score), on every loaded plugin that implements it. Returns nothing. Build nothing slow
    here: a scorer that needs a model or a connection opens it in ``__aenter__``, which the service
    awaits before serving. Which scorer handles which question kind is chosen by the
    ``[scoring.routes]`` settings, not by the plugin; a plugin may register several scorers (e.g.
    variants to A/B test).

    Example::

        @hookimpl
        def register_scorers(register, context):
            settings = context.config("keywords")
            register(KeywordOverlapScorer(min_word_length=int(settings.get("min_word_length", 3))))
    """


@hookspec
def register_notifiers(register: Callable[[Notifier], None], context: PluginContext) -> None:
    """Register push-notification channels (FCM, APNs, Web Push, ...).

    ``register``
        Call ``register(notifier)`` once per :class:`plugins.notifier.Notifier` the plugin provides.
        Notifier names must be unique, and so must the platforms they serve (``"android"``, ``"ios"``):
        each device platform is routed to exactly one notifier. A clash, a notifier serving no platform
        or an object that is not a ``Notifier`` raises :class:`plugins.manager.PluginError` and stops
        start-up.
    ``context``
        A :class:`plugins.context.PluginContext`: the plugin's settings (``context.config(name)``, the
        ``[plugins.config.<name>]`` table), a writable data directory and the environment.

    Called once per process at start-up, after plugins load and before the first event is handled, on
    every loaded plugin that implements it. Returns nothing. A plugin whose settings table is absent or
    empty registers nothing; an invalid table should raise with a message naming the key, which stops
    start-up. Build nothing slow here: a notifier opens its HTTP client in ``__aenter__``, which the
    service awaits at start-up.

    Example::

        @hookimpl
        def register_notifiers(register, context):
            settings = context.config("webpush")
            if settings:
                register(WebPushNotifier(vapid_key=settings["vapid_key"]))
    """
