"""Messages of the moderation REST API (``/moderation/...``), camelCase on the wire like the rest."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from msgspec import Meta, Struct

from app.domain.moderation_rules import OverrideDecision
from app.domain.quiz import QuestionKind, UnlockState

__all__ = [
    "AttemptDetail",
    "AttemptPage",
    "AttemptSummary",
    "DecisionView",
    "OverrideInput",
    "OverrideResult",
    "ReviewAnswer",
    "ReviewQuestion",
    "ScoreLine",
]


class AttemptSummary(Struct, frozen=True, rename="camel"):
    """One attempt in the list: outcome and flags, not the answers."""

    id: uuid.UUID
    connection_key_id: uuid.UUID
    conversation_id: uuid.UUID
    requester_id: uuid.UUID
    target_id: uuid.UUID
    score: float
    passed: bool
    unlock_state: UnlockState
    flags: list[str]
    submitted_at: datetime
    submitted_by: uuid.UUID | None
    """The moderator who submitted it for the requester; null when the requester (or a backend) did."""


class AttemptPage(Struct, frozen=True, rename="camel"):
    """A page of attempts, newest first. ``nextCursor`` fetches the next page; null on the last one."""

    items: list[AttemptSummary]
    next_cursor: str | None


class ScoreLine(Struct, frozen=True, rename="camel"):
    """How one question was scored: by which scorer and version, its criteria and flags, and the
    fallback when the routed scorer failed."""

    question_id: str
    kind: QuestionKind
    scorer: str
    scorer_version: str
    score: float
    passed: bool
    feedback: str | None
    error: str | None
    criteria: dict[str, float] | None
    flags: list[str]
    fallback_from: str | None
    fallback_reason: str | None
    variant: str | None


class ReviewQuestion(Struct, frozen=True, rename="camel"):
    """A question of the quiz with its server-side answer key, for the moderator's judgement."""

    id: uuid.UUID
    position: int
    kind: QuestionKind
    prompt: str
    choices: list[str] | None
    answer_key: str | None


class ReviewAnswer(Struct, frozen=True, rename="camel"):
    """What the requester answered."""

    question_id: uuid.UUID
    value: str
    elapsed_ms: int | None


class DecisionView(Struct, frozen=True, rename="camel"):
    """A moderator's decision on an attempt, with the conversation state before and after."""

    id: uuid.UUID
    attempt_id: uuid.UUID
    conversation_id: uuid.UUID
    moderator_id: uuid.UUID
    decision: OverrideDecision
    reason: str | None
    """Null when the attempt's requester was erased (the reason is sealed with their data key)."""
    previous_state: UnlockState
    new_state: UnlockState
    retry_available_at: datetime | None
    decided_at: datetime


class AttemptDetail(Struct, frozen=True, rename="camel"):
    """An attempt in full: answers, the scoring breakdown (and shadow scorers'), the quiz, the
    conversation's current state and every decision made on it."""

    attempt: AttemptSummary
    conversation_state: UnlockState | None
    retry_available_at: datetime | None
    started_at: datetime
    total_elapsed_ms: int | None
    feedback: list[str] | None
    """Null when the target was erased (their data key is destroyed)."""
    experiments: dict[str, str]
    breakdown: list[ScoreLine]
    shadow_breakdown: list[ScoreLine]
    questions: list[ReviewQuestion]
    answers: list[ReviewAnswer] | None
    """Null when the requester was erased."""
    erased: list[str]
    """Fields that became unreadable because a participant was erased."""
    decisions: list[DecisionView]


class OverrideInput(Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """Body of ``POST /moderation/attempts/{id}/override``. ``reason`` is required free text (at most
    ``[moderation] max_reason_chars``); it is stored with the decision and never logged."""

    decision: OverrideDecision
    reason: Annotated[str, Meta(max_length=10_000)]


class OverrideResult(Struct, frozen=True, rename="camel"):
    """What an override did. ``applied`` is false when the conversation already was as decided (nothing
    stored); ``replayed`` is true when this ``Idempotency-Key`` was seen before (the first answer again)."""

    applied: bool
    replayed: bool
    conversation_id: uuid.UUID
    unlock_state: UnlockState
    decision: DecisionView | None
