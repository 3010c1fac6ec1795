"""What the service hands to plugins when they register: their settings and shared resources."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["PluginContext", "SharedCache"]


class SharedCache(Protocol):
    """A byte cache shared by every instance of the service (Redis when configured). A miss is ``None``;
    it may forget anything at any time, so plugins use it only to save work."""

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None: ...


@dataclass(frozen=True)
class PluginContext:
    """Handed to every hook (``register_scorers``, ``register_notifiers``).

    Attributes:
        settings: every plugin's settings table by name, from ``[plugins.config.<name>]`` in
            ``litestar.toml`` (or ``CK_PLUGINS__CONFIG`` as JSON); read yours with :meth:`config`.
        data_dir: a directory the plugin may write to (models, caches), ``./var`` by default.
        environment: ``development``, ``test`` or ``production``.
        shared_cache: the cross-instance cache, or ``None`` when the service runs without one (then
            an in-process cache is all there is).
    """

    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    data_dir: Path = Path("var")
    environment: str = "development"
    shared_cache: SharedCache | None = None

    def config(self, name: str) -> Mapping[str, Any]:
        """The settings table ``[plugins.config.<name>]`` (empty when absent)."""
        return self.settings.get(name, {})
