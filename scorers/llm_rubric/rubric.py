"""The grading rubric: loaded from TOML, rendered into prompts, and used to read and combine the model's
grades. Pure: no I/O apart from :func:`load_rubric`.
"""

from __future__ import annotations

import functools
import string
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from scorers.llm_rubric.injection import data_section

__all__ = [
    "AnswerItem",
    "Criterion",
    "ReplyError",
    "Rubric",
    "RubricError",
    "Verdict",
    "combine",
    "feedback_for",
    "load_rubric",
    "parse_reply",
    "render_prompts",
    "resolve_path",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_RESERVED = frozenset({"id", "reason"})


class RubricError(ValueError):
    """The rubric file is missing or invalid."""


class ReplyError(ValueError):
    """The model's reply is not a valid set of grades for the answers sent."""


class Criterion(Struct, frozen=True, forbid_unknown_fields=True):
    """One thing the model grades.

    Attributes:
        name: key in the model's reply and in ``ScoreResult.criteria`` (lower-case identifier).
        weight: relative weight in the total.
        description: what the criterion asks, shown to the model.
        levels: what each level from 0 to ``max_level`` means, shown to the model.
        hint: feedback shown to the answerer when this is their weakest criterion.
        veto: at 0, the total is 0 whatever the other criteria say.
        zero_on_injection: forced to 0 when the injection guard fires.
    """

    name: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)]
    weight: Annotated[float, Meta(gt=0)]
    description: str
    levels: list[str]
    hint: str
    veto: bool = False
    zero_on_injection: bool = False


class Feedback(Struct, frozen=True, forbid_unknown_fields=True):
    """Fixed feedback texts: for an empty answer, and for one the injection guard flagged."""

    empty: str
    injection: str


class Rubric(Struct, frozen=True, forbid_unknown_fields=True):
    """A whole rubric file (see ``templates/rubrics/free_response.toml`` for the fields' meaning)."""

    version: str
    system_prompt: str
    user_prompt: str
    criteria: list[Criterion]
    feedback: Feedback
    max_level: Annotated[int, Meta(ge=1, le=10)] = 2
    injection_cap: Annotated[float, Meta(ge=0, le=1)] = 0.0

    @property
    def criterion_names(self) -> tuple[str, ...]:
        """The criteria's names, in file order."""
        return tuple(c.name for c in self.criteria)


class AnswerItem(Struct, frozen=True):
    """One answer as the model sees it, under an opaque ``id`` (``a1``, ``a2``...; never the question id)."""

    id: str
    question: str
    topic: str
    their_words: str
    their_boundaries: list[str]
    answer: str


class Verdict(Struct, frozen=True):
    """A combined grade: the total in [0, 1] and each criterion in [0, 1]."""

    score: float
    criteria: dict[str, float]


def resolve_path(name: str) -> Path:
    """The rubric file: ``name`` as given when absolute or present from the working directory, else
    relative to the project root (so the default works from any directory in a checkout)."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path


def load_rubric(path: Path) -> Rubric:
    """Read and check a rubric file; raises :class:`RubricError` saying what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RubricError(f"cannot read rubric file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RubricError(f"rubric file {path} is not valid TOML: {exc}") from None
    try:
        rubric = msgspec.convert(data, Rubric)
    except msgspec.ValidationError as exc:
        raise RubricError(f"rubric file {path}: {exc}") from None
    _check(rubric, path)
    return rubric


def _check(rubric: Rubric, path: Path) -> None:
    names = rubric.criterion_names
    if not names:
        raise RubricError(f"rubric file {path}: no criteria")
    if len(set(names)) != len(names):
        raise RubricError(f"rubric file {path}: criterion names repeat")
    if reserved := _RESERVED & set(names):
        raise RubricError(f"rubric file {path}: criterion names {sorted(reserved)} are reserved")
    for criterion in rubric.criteria:
        if len(criterion.levels) != rubric.max_level + 1:
            raise RubricError(
                f"rubric file {path}: criterion {criterion.name!r} needs {rubric.max_level + 1} levels "
                f"(0 to max_level), has {len(criterion.levels)}"
            )
    if "$data" not in rubric.user_prompt:
        raise RubricError(f"rubric file {path}: user_prompt must contain $data (the answers)")
    # Render once with a dummy answer so a bad $placeholder fails at start-up, not on the first request.
    try:
        render_prompts(rubric, [AnswerItem("a1", "q", "t", "w", [], "a")])
    except (KeyError, ValueError) as exc:
        raise RubricError(f"rubric file {path}: bad placeholder in a prompt: {exc}") from None


def _criteria_text(rubric: Rubric) -> str:
    blocks = []
    for c in rubric.criteria:
        lines = [f'"{c.name}": {c.description}']
        lines += [f"  {level}: {meaning}" for level, meaning in enumerate(c.levels)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _reply_example(rubric: Rubric) -> str:
    fields = ", ".join(f'"{name}": <0-{rubric.max_level}>' for name in rubric.criterion_names)
    return f'{{"grades": [{{"id": "<answer id>", {fields}, "reason": "<one short sentence>"}}]}}'


def render_prompts(rubric: Rubric, items: Sequence[AnswerItem]) -> tuple[str, str]:
    """The system and user messages grading ``items``. User texts appear only as JSON inside ``<data>``."""
    system = string.Template(rubric.system_prompt).substitute(
        criteria=_criteria_text(rubric), max_level=rubric.max_level, reply_example=_reply_example(rubric)
    )
    user = string.Template(rubric.user_prompt).substitute(
        count=len(items),
        ids=", ".join(item.id for item in items),
        data=data_section("data", {"answers": list(items)}),
    )
    return system.strip(), user.strip()


@functools.lru_cache(maxsize=16)
def _reply_type(names: tuple[str, ...], max_level: int) -> type:
    """A Struct type for the reply: every criterion required, as a number in [0, max_level]."""
    level = Annotated[float, Meta(ge=0, le=max_level)]
    grade = msgspec.defstruct(
        "Grade", [("id", str), *((name, level) for name in names), ("reason", str | None, None)], frozen=True
    )
    return msgspec.defstruct("Reply", [("grades", list[grade])], frozen=True)  # type: ignore[valid-type]


def parse_reply(rubric: Rubric, content: str, ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """The levels per answer id from the model's reply text.

    Strict: the reply must be a JSON object ``{"grades": [...]}`` whose entries give every criterion as
    a number in [0, max_level], and name each of ``ids`` exactly once and no other id. Unknown extra keys
    are ignored. Raises :class:`ReplyError` otherwise, so a malformed reply never becomes a score.
    """
    try:
        reply: Any = msgspec.json.decode(content, type=_reply_type(rubric.criterion_names, rubric.max_level))
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise ReplyError(f"reply does not match the grades schema: {exc}") from None
    seen: dict[str, dict[str, float]] = {}
    wanted = set(ids)
    for grade in reply.grades:
        if grade.id not in wanted:
            raise ReplyError(f"reply grades an unknown id {_short(grade.id)!r}")
        if grade.id in seen:
            raise ReplyError(f"reply grades id {grade.id!r} twice")
        seen[grade.id] = {name: float(getattr(grade, name)) for name in rubric.criterion_names}
    if missing := [i for i in ids if i not in seen]:
        raise ReplyError(f"reply misses ids {missing}")
    return seen


def _short(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def combine(rubric: Rubric, levels: Mapping[str, float], *, injection: bool = False) -> Verdict:
    """Combine one answer's levels into a :class:`Verdict`.

    Each level maps to ``level / max_level``; the total is the weighted mean. A ``veto`` criterion at 0
    makes the total 0. With ``injection``, ``zero_on_injection`` criteria become 0 and the total is capped
    at ``injection_cap``. Raises ``KeyError`` when a criterion is missing from ``levels``.
    """
    criteria = {c.name: min(1.0, max(0.0, float(levels[c.name]) / rubric.max_level)) for c in rubric.criteria}
    if injection:
        for c in rubric.criteria:
            if c.zero_on_injection:
                criteria[c.name] = 0.0
    total_weight = sum(c.weight for c in rubric.criteria)
    score = sum(c.weight * criteria[c.name] for c in rubric.criteria) / total_weight
    if any(c.veto and criteria[c.name] == 0.0 for c in rubric.criteria):
        score = 0.0
    if injection:
        score = min(score, rubric.injection_cap)
    # Rounded so equal grades give byte-equal scores whatever the summation order.
    return Verdict(score=round(min(1.0, max(0.0, score)), 6), criteria={k: round(v, 6) for k, v in criteria.items()})


def feedback_for(rubric: Rubric, verdict: Verdict, *, injection: bool = False) -> str | None:
    """Generic advice for the answerer: the hint of the weakest criterion (vetoes first), or ``None`` when
    every criterion is at the top level. Never the model's reasoning, which may quote the person's texts."""
    if injection:
        return rubric.feedback.injection
    for c in rubric.criteria:
        if c.veto and verdict.criteria[c.name] == 0.0:
            return c.hint
    weakest = min(rubric.criteria, key=lambda c: (verdict.criteria[c.name], -c.weight))
    return weakest.hint if verdict.criteria[weakest.name] < 1.0 else None
