"""Messages that cross the API boundary, shared by REST (as-is) and GraphQL (mapped field by field)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from app.domain.quiz import QuestionKind, UnlockState

__all__ = [
    "AnswerInput",
    "ConnectionKeyPayload",
    "ConnectionKeyResponseInput",
    "ConnectionKeyResult",
    "CreateConnectionKeyInput",
    "PublicQuestion",
    "QuestionScore",
    "canonical_submission",
]

MAX_ANSWERS = 30
_canonical = msgspec.json.Encoder()


class PublicQuestion(Struct, frozen=True, rename="camel"):
    """A question as the client sees it: no answer key."""

    id: uuid.UUID
    kind: QuestionKind
    prompt: str
    choices: list[str] | None


class ConnectionKeyPayload(Struct, frozen=True, rename="camel"):
    """What ``createConnectionKey`` returns."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    target_user_id: uuid.UUID
    questions: list[PublicQuestion]
    signed_payload: str
    expires_at: datetime


class CreateConnectionKeyInput(Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """REST body of ``POST /connection-keys``; ``requesterUserId`` only for service-role callers."""

    target_user_id: uuid.UUID
    requester_user_id: uuid.UUID | None = None


class AnswerInput(Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """One answer: the chosen choice's text, or free text."""

    question_id: uuid.UUID
    value: Annotated[str, Meta(max_length=4000)]
    elapsed_ms: Annotated[int, Meta(ge=0, le=3_600_000)] | None = None


class ConnectionKeyResponseInput(Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """A submission: the signed payload it answers and the answers."""

    signed_payload: Annotated[str, Meta(min_length=1, max_length=8192)]
    answers: Annotated[list[AnswerInput], Meta(max_length=MAX_ANSWERS)]


class QuestionScore(Struct, frozen=True, rename="camel"):
    """One line of the score breakdown: ``scorer`` decided it; ``fallback_from`` names the routed scorer
    that failed when a fallback decided instead."""

    question_id: uuid.UUID
    kind: QuestionKind
    scorer: str
    score: float
    passed: bool
    fallback_from: str | None = None


def canonical_submission(submitter: uuid.UUID, answers: list[AnswerInput]) -> bytes:
    """The bytes a submission's digest covers: who submits and the answers, ordered by question, so the
    same answers in another order are the same submission. Never stored: only its HMAC is."""
    ordered = sorted(([str(a.question_id), a.value, a.elapsed_ms] for a in answers), key=lambda a: a[0])
    return _canonical.encode([str(submitter), ordered])


class ConnectionKeyResult(Struct, frozen=True, rename="camel"):
    """What ``submitConnectionKey`` returns."""

    attempt_id: uuid.UUID
    score: float
    passed: bool
    unlock_state: UnlockState
    breakdown: list[QuestionScore]
    feedback: list[str]
    retry_available_at: datetime | None
