"""The scorer contract: what a scorer plugin receives and returns. Importable without Litestar."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Protocol, runtime_checkable

from msgspec import Meta, Struct

__all__ = ["ScoreRequest", "ScoreResult", "Scorer"]


class ScoreRequest(Struct, frozen=True):
    """One answer to score.

    ``kind`` is ``COMPREHENSION``, ``CONSENT`` or ``FREE_RESPONSE``. ``answer_key`` is the expected answer
    (the person's own words) where one exists, ``None`` for free responses. ``topic`` is what the question
    is about (a prompt's question or a consent topic).
    """

    question_id: str
    kind: str
    prompt: str
    response: str
    choices: list[str] | None = None
    answer_key: str | None = None
    topic: str | None = None
    difficulty: int = 2
    locale: str | None = None


class ScoreResult(Struct, frozen=True):
    """A scorer's verdict on one answer: ``score`` in [0, 1], optional feedback that must not reveal
    the answer key."""

    question_id: str
    score: Annotated[float, Meta(ge=0.0, le=1.0)]
    feedback: str | None = None


@runtime_checkable
class Scorer(Protocol):
    """A named, versioned scoring strategy.

    ``score`` receives a batch and returns one result per request, in any order, matched by
    ``question_id``. It must be safe to call concurrently. CPU-heavy work belongs off the event loop.
    """

    name: str
    version: str
    kinds: frozenset[str]

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]: ...
