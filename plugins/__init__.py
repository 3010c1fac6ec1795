"""The plugin contract, importable without Litestar: ``hookimpl`` marks a plugin's hook implementations."""

from plugins.hookspecs import hookimpl

__all__ = ["hookimpl"]
