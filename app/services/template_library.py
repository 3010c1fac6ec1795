"""The template library: seed files -> database -> a short-lived in-process copy for generation."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import msgspec

from app.db.template_store import TemplateStore
from app.domain.generation import ALLOWED_PLACEHOLDERS, template_placeholders
from app.domain.quiz import Template, TemplatePurpose

__all__ = ["TemplateFileError", "TemplateLibrary", "read_template_files"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class TemplateFileError(ValueError):
    """A seed file is malformed; the message names the file and the entry."""


def _resolve(directory: str) -> Path:
    path = Path(directory)
    return path if path.is_absolute() else PROJECT_ROOT / path


def read_template_files(directory: str) -> list[Template]:
    """Parse and validate every ``*.toml`` under ``directory`` (``[[template]]`` tables)."""
    root = _resolve(directory)
    files = sorted(root.glob("*.toml"))
    if not files:
        raise TemplateFileError(f"no *.toml template files in {root}")
    templates: dict[str, Template] = {}
    for file in files:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
            entries = msgspec.convert(data.get("template", []), list[Template])
        except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            raise TemplateFileError(f"{file.name}: {exc}") from exc
        for entry in entries:
            for wording in entry.wordings:
                try:
                    unknown = template_placeholders(wording) - ALLOWED_PLACEHOLDERS
                except ValueError as exc:
                    raise TemplateFileError(f"{file.name}: template {entry.key}: {exc}") from exc
                if unknown:
                    raise TemplateFileError(
                        f"{file.name}: template {entry.key}: unknown placeholders {sorted(unknown)}"
                    )
                if entry.purpose is TemplatePurpose.DISTRACTOR and template_placeholders(wording):
                    # Distractors are shown verbatim; a placeholder would reach the client as "{name}".
                    raise TemplateFileError(f"{file.name}: template {entry.key}: distractors take no placeholders")
            if entry.key in templates:
                raise TemplateFileError(f"{file.name}: duplicate template key {entry.key}")
            templates[entry.key] = entry
    return list(templates.values())


class TemplateLibrary:
    """Active templates per locale, reloaded from the database at most every ``ttl_seconds``."""

    def __init__(self, store: TemplateStore, default_locale: str, ttl_seconds: float) -> None:
        self._store = store
        self._default = default_locale
        self._ttl = ttl_seconds
        self._cached: dict[str, tuple[float, list[Template]]] = {}

    def _language(self, locale: str | None) -> str:
        return (locale or self._default).replace("_", "-").split("-")[0].lower()

    async def for_locale(self, locale: str | None) -> list[Template]:
        """Templates for ``locale``'s language, falling back to the default locale when it has none."""
        language = self._language(locale)
        hit = self._cached.get(language)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        templates = await self._store.active(language)
        if not templates and language != self._default:
            templates = await self.for_locale(self._default)
        self._cached[language] = (time.monotonic() + self._ttl, templates)
        return templates

    def invalidate(self) -> None:
        self._cached.clear()

    async def load_files(self, directory: str, now: Callable[[], datetime]) -> int:
        """Upsert the seed files into the database; returns the number of templates written."""
        count = await self._store.upsert(read_template_files(directory), now())
        self.invalidate()
        return count
