"""Placeholder until the rubric scorer lands: registers nothing."""

from __future__ import annotations

from collections.abc import Callable

from plugins.hookspecs import hookimpl
from plugins.scorer import Scorer


@hookimpl
def register_scorers(register: Callable[[Scorer], None]) -> None:
    """Registers nothing yet."""
