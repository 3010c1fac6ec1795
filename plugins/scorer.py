"""The scorer contract: what a scorer plugin receives and returns. Importable without Litestar."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Protocol, runtime_checkable

from msgspec import Meta, Struct

__all__ = ["DescribesItself", "ScoreRequest", "ScoreResult", "Scorer", "ScorerUnavailableError"]


class ScoreRequest(Struct, frozen=True):
    """One answer to score.

    ``kind`` is ``COMPREHENSION``, ``CONSENT`` or ``FREE_RESPONSE``. ``answer_key`` is the expected answer
    (the person's own words) where one exists, ``None`` for free responses. ``topic`` is what the question
    is about (a prompt's question or a consent topic). ``references`` are the person's own texts the
    answer should relate to (for a free response: their answer to the topic's prompt, then their stated
    boundaries), so a rubric can judge whether the answer is specific to them and respects their
    boundaries. ``difficulty`` runs from 1 (easy) to 5. ``locale`` is the answerer's, when known.
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
    references: tuple[str, ...] = ()


class ScoreResult(Struct, frozen=True):
    """A scorer's verdict on one answer.

    ``score`` is in [0, 1]. ``feedback`` is shown to the answerer and must not reveal the answer key.
    ``criteria`` optionally breaks the score down (e.g. a rubric's ``specific``, ``respectful``); it is
    stored with the attempt for review and never shown to the answerer. ``flags`` names anything a
    reviewer should look at (e.g. ``prompt_injection``, ``truncated``).
    """

    question_id: str
    score: Annotated[float, Meta(ge=0.0, le=1.0)]
    feedback: str | None = None
    criteria: dict[str, float] | None = None
    flags: tuple[str, ...] = ()


class ScorerUnavailableError(RuntimeError):
    """Raised by :meth:`Scorer.score` when the scorer cannot score right now (no endpoint configured,
    circuit open, backend down after retries). The service then uses the fallback scorer configured for
    the question kind (``[scoring.fallbacks]``); without one, the questions fail with a typed error."""


@runtime_checkable
class Scorer(Protocol):
    """A named, versioned scoring strategy.

    ``score`` receives a batch and returns one result per request, in any order, matched by
    ``question_id``. It must be safe to call concurrently. CPU-heavy work belongs off the event loop.
    ``deterministic`` declares that the same batch always gets the same scores (the conformance suite
    checks it).

    A scorer that holds resources (a model session, an HTTP client) may also be an async context
    manager: the service enters it at start-up, before the first request, and exits it at shutdown.
    """

    name: str
    version: str
    kinds: frozenset[str]
    deterministic: bool

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]: ...


@runtime_checkable
class DescribesItself(Protocol):
    """Optional: a scorer with ``describe()`` has its description shown in ``/ready`` under ``scorers``
    (e.g. the onnxruntime provider in use). Values must be JSON-serialisable and free of secrets."""

    def describe(self) -> Mapping[str, Any]: ...
