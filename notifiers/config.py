"""Settings helpers shared by the built-in notifiers: validation with messages that name the key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

__all__ = ["ConfigError", "convert_table", "read_secret", "require_http_url"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A ``[plugins.config.<name>]`` table is invalid; the message names the key (never its value)."""


def convert_table(raw: Mapping[str, Any], kind: type[T], name: str) -> T:
    """``raw`` as ``kind`` (lax: environment strings convert to numbers and booleans); raises
    :class:`ConfigError` naming the offending key as it is written in ``litestar.toml``."""
    try:
        return msgspec.convert(dict(raw), kind, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc).replace("`$.", f"`{name}.")
        raise ConfigError(f"invalid [plugins.config.{name}]: {message}") from None


def require_http_url(value: str, key: str, name: str) -> str:
    """``value`` without a trailing slash; it must be an http(s) URL."""
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"invalid [plugins.config.{name}]: {key} must start with http:// or https://")
    return value


def read_secret(inline: str, file: str, keys: tuple[str, str], name: str) -> str:
    """A secret given inline (``keys[0]``, e.g. from the environment) or as a file path (``keys[1]``);
    exactly one must be set."""
    if inline.strip() and file.strip():
        raise ConfigError(f"invalid [plugins.config.{name}]: set {keys[0]} or {keys[1]}, not both")
    if inline.strip():
        return inline
    if not file.strip():
        raise ConfigError(f"invalid [plugins.config.{name}]: {keys[0]} or {keys[1]} is required")
    try:
        return Path(file).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"invalid [plugins.config.{name}]: {keys[1]} cannot be read ({exc.strerror})") from None
