"""The template library in the database."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import msgspec

from app.db.tables import PromptTemplate
from app.domain.quiz import QuestionKind, Template, TemplatePurpose

__all__ = ["TemplateStore"]

_variants = msgspec.json.Decoder(list[str])


class TemplateStore:
    """Loads active templates and upserts the library by ``key``."""

    async def active(self, locale: str | None = None) -> list[Template]:
        query = PromptTemplate.select().where(PromptTemplate.active == True)  # noqa: E712 - Piccolo operator
        if locale is not None:
            query = query.where(PromptTemplate.locale == locale)
        return [
            Template(
                key=row["key"],
                kind=QuestionKind(row["kind"]),
                purpose=TemplatePurpose(row["purpose"]),
                text=row["text"],
                variants=_variants.decode(row["variants"]),
                difficulty=row["difficulty"],
                locale=row["locale"],
                active=row["active"],
            )
            for row in await query.order_by(PromptTemplate.key).run()
        ]

    async def locales(self) -> set[str]:
        rows = await PromptTemplate.select(PromptTemplate.locale).distinct().run()
        return {row["locale"] for row in rows}

    async def upsert(self, templates: Sequence[Template], now: datetime) -> int:
        """Insert new templates and update existing ones (matched by key) in one transaction."""
        if not templates:
            return 0
        columns = [
            PromptTemplate.kind,
            PromptTemplate.purpose,
            PromptTemplate.text,
            PromptTemplate.variants,
            PromptTemplate.difficulty,
            PromptTemplate.locale,
            PromptTemplate.active,
            PromptTemplate.updated_at,
        ]
        rows = [
            PromptTemplate(
                id=uuid.uuid5(uuid.NAMESPACE_URL, f"connection-key-template:{t.key}"),
                key=t.key,
                kind=t.kind.value,
                purpose=t.purpose.value,
                text=t.text,
                variants=msgspec.json.encode(t.variants).decode(),
                difficulty=t.difficulty,
                locale=t.locale,
                active=t.active,
                updated_at=now,
            )
            for t in templates
        ]
        await (
            PromptTemplate.insert(*rows)
            .on_conflict(target=PromptTemplate.key, action="DO UPDATE", values=columns)
            .run()
        )
        return len(rows)
