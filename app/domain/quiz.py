"""Shapes of profiles, templates and questions: the vocabulary the domain modules share."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "ConsentPreference",
    "GeneratedQuestion",
    "IssuedQuiz",
    "ProfileInput",
    "PromptPair",
    "QuestionKind",
    "TargetProfile",
    "Template",
    "TemplatePurpose",
    "UnlockState",
]

ShortText = Annotated[str, Meta(min_length=1, max_length=200)]
LongText = Annotated[str, Meta(min_length=1, max_length=1000)]


class QuestionKind(str, enum.Enum):
    """What a question tests."""

    COMPREHENSION = "COMPREHENSION"
    CONSENT = "CONSENT"
    FREE_RESPONSE = "FREE_RESPONSE"


class UnlockState(str, enum.Enum):
    """Where a conversation (or an attempt's outcome) stands."""

    LOCKED = "LOCKED"
    PENDING = "PENDING"
    UNLOCKED = "UNLOCKED"
    RETRY_AVAILABLE = "RETRY_AVAILABLE"
    COOLDOWN = "COOLDOWN"


class TemplatePurpose(str, enum.Enum):
    """A template is either a question stem or a distractor choice."""

    QUESTION = "QUESTION"
    DISTRACTOR = "DISTRACTOR"


class PromptPair(Struct, forbid_unknown_fields=True, frozen=True):
    """One profile prompt and the person's answer to it."""

    question: ShortText
    answer: LongText


class ConsentPreference(Struct, forbid_unknown_fields=True, frozen=True):
    """A boundary the person set, e.g. topic ``pace``, statement ``I like to text for a while before meeting``."""

    topic: Annotated[str, Meta(min_length=1, max_length=60)]
    statement: Annotated[str, Meta(min_length=1, max_length=300)]


class ProfileInput(Struct, forbid_unknown_fields=True, frozen=True, rename="camel"):
    """A profile as written by its owner (GraphQL ``ProfileInput``, REST ``PUT /profiles/{userId}``)."""

    display_name: Annotated[str, Meta(min_length=1, max_length=80)]
    prompts: Annotated[list[PromptPair], Meta(max_length=10)]
    consent_preferences: Annotated[list[ConsentPreference], Meta(max_length=20)]
    bio: Annotated[str, Meta(max_length=2000)] | None = None
    locale: (
        Annotated[str, Meta(min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")] | None
    ) = None
    demographic_segments: Annotated[
        dict[Annotated[str, Meta(max_length=40)], Annotated[str, Meta(max_length=60)]], Meta(max_length=10)
    ] = msgspec.field(default_factory=dict)
    """Optional self-declared segments (e.g. ``ageBand``), used only for fairness monitoring."""


class TargetProfile(Struct, frozen=True):
    """What generation knows about the person whose quiz it is."""

    user_id: uuid.UUID
    display_name: str
    prompts: list[PromptPair]
    consent_preferences: list[ConsentPreference]
    locale: str | None = None


class Template(Struct, frozen=True, forbid_unknown_fields=True):
    """One entry of the template library.

    ``QUESTION`` templates are stems with ``{name}``, ``{prompt}`` and ``{topic}`` placeholders; each
    variant is an alternative wording. ``DISTRACTOR`` templates are plausible wrong choices; every variant
    is one candidate.
    """

    key: Annotated[str, Meta(min_length=1, max_length=120, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
    kind: QuestionKind
    purpose: TemplatePurpose
    text: Annotated[str, Meta(min_length=1, max_length=500)]
    variants: list[Annotated[str, Meta(min_length=1, max_length=500)]] = msgspec.field(default_factory=list)
    difficulty: Annotated[int, Meta(ge=1, le=5)] = 2
    locale: str = "en"
    active: bool = True

    @property
    def wordings(self) -> list[str]:
        """The main text followed by its variants; index = variant number."""
        return [self.text, *self.variants]


class GeneratedQuestion(Struct, frozen=True):
    """A question as the server keeps it. ``answer_key`` never leaves the server."""

    id: uuid.UUID
    position: int
    kind: QuestionKind
    prompt: str
    choices: list[str] | None
    answer_key: str | None
    template_key: str
    variant: int
    difficulty: int
    topic: str | None = None
    """What the question is about (a prompt's question or a consent topic), for feedback that helps
    without revealing the answer."""
    references: list[str] | None = None
    """Server-side only: the person's own texts a free response should relate to (their answer to the
    topic's prompt, then their boundaries), for rubric scorers."""


class IssuedQuiz(Struct, frozen=True):
    """A connection key as the server knows it (questions with answer keys); cached until expiry."""

    key_id: uuid.UUID
    conversation_id: uuid.UUID
    requester_id: uuid.UUID
    target_id: uuid.UUID
    target_name: str
    difficulty: int
    questions: list[GeneratedQuestion]
    signed_payload: str
    issued_at: datetime
    expires_at: datetime
    target_locale: str | None = None
