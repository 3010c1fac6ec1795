"""Hook specifications: the whole plugin contract, one function per hook.

Hooks are synchronous and cheap; anything slow or async lives on the objects they register
(in the style of datasette, pytest and simonw/llm).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from plugins.scorer import Scorer

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec", "register_scorers"]

PROJECT_NAME = "connection_key"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_scorers(register: Callable[[Scorer], None]) -> None:
    """Register scoring strategies.

    Called once at start-up, after plugins load and before the first request. Call ``register(scorer)``
    once per :class:`plugins.scorer.Scorer` the plugin provides; return nothing. Names must be unique
    across all plugins (a duplicate stops start-up). Which scorer handles which question kind is chosen
    by the ``[scoring.routes]`` settings, not by the plugin.
    """
