"""GraphQL object and input types (the API's public contract) and their mapping from Structs."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import strawberry

from app.db.device_store import DeviceRecord
from app.db.profile_store import ConversationRecord, ProfileRecord
from app.domain import contract
from app.domain.events import ConversationStatusChanged
from app.domain.quiz import QuestionKind as QuestionKindEnum
from app.domain.quiz import UnlockState as UnlockStateEnum
from app.domain.requester_state import ParticipantView

__all__ = [
    "AnswerInput",
    "ConnectionKeyPayload",
    "ConnectionKeyQuestion",
    "ConnectionKeyResponseInput",
    "ConnectionKeyResult",
    "ConnectionKeyStatus",
    "ConsentPreference",
    "ConsentPreferenceInput",
    "Conversation",
    "Device",
    "DevicePlatform",
    "Profile",
    "ProfileInput",
    "Prompt",
    "PromptInput",
    "QuestionKind",
    "QuestionScore",
    "UnlockState",
]

QuestionKind = strawberry.enum(QuestionKindEnum, name="QuestionKind")
UnlockState = strawberry.enum(UnlockStateEnum, name="UnlockState")
# A requester's own outcome: shown to them only, never to the other participant.
_OWN_STATES = frozenset({UnlockStateEnum.RETRY_AVAILABLE, UnlockStateEnum.COOLDOWN})


@strawberry.type
class ConnectionKeyQuestion:
    id: strawberry.ID
    kind: QuestionKind
    prompt: str
    choices: list[str] | None


@strawberry.type
class ConnectionKeyPayload:
    id: strawberry.ID
    conversation_id: strawberry.ID
    target_user_id: strawberry.ID
    questions: list[ConnectionKeyQuestion]
    signed_payload: str
    expires_at: datetime

    @classmethod
    def of(cls, payload: contract.ConnectionKeyPayload) -> ConnectionKeyPayload:
        return cls(
            id=strawberry.ID(str(payload.id)),
            conversation_id=strawberry.ID(str(payload.conversation_id)),
            target_user_id=strawberry.ID(str(payload.target_user_id)),
            questions=[
                ConnectionKeyQuestion(id=strawberry.ID(str(q.id)), kind=q.kind, prompt=q.prompt, choices=q.choices)
                for q in payload.questions
            ],
            signed_payload=payload.signed_payload,
            expires_at=payload.expires_at,
        )


@strawberry.input
class AnswerInput:
    question_id: strawberry.ID
    value: str
    elapsed_ms: int | None = None


@strawberry.input
class ConnectionKeyResponseInput:
    signed_payload: str
    answers: list[AnswerInput]

    def as_struct_data(self) -> dict[str, object]:
        """The camelCase mapping :class:`app.domain.contract.ConnectionKeyResponseInput` validates."""
        return {
            "signedPayload": self.signed_payload,
            "answers": [
                {"questionId": a.question_id, "value": a.value, "elapsedMs": a.elapsed_ms} for a in self.answers
            ],
        }


@strawberry.type
class QuestionScore:
    question_id: strawberry.ID
    kind: QuestionKind
    scorer: str
    score: float
    passed: bool
    fallback_from: str | None = strawberry.field(
        default=None, description="The routed scorer that failed, when a fallback (`scorer`) decided instead."
    )


@strawberry.type
class ConnectionKeyResult:
    attempt_id: strawberry.ID
    score: float
    passed: bool
    unlock_state: UnlockState
    breakdown: list[QuestionScore]
    feedback: list[str]
    retry_available_at: datetime | None

    @classmethod
    def of(cls, result: contract.ConnectionKeyResult) -> ConnectionKeyResult:
        return cls(
            attempt_id=strawberry.ID(str(result.attempt_id)),
            score=result.score,
            passed=result.passed,
            unlock_state=result.unlock_state,
            breakdown=[
                QuestionScore(
                    question_id=strawberry.ID(str(s.question_id)),
                    kind=s.kind,
                    scorer=s.scorer,
                    score=s.score,
                    passed=s.passed,
                    fallback_from=s.fallback_from,
                )
                for s in result.breakdown
            ],
            feedback=result.feedback,
            retry_available_at=result.retry_available_at,
        )


@strawberry.input
class PromptInput:
    question: str
    answer: str


@strawberry.input
class ConsentPreferenceInput:
    topic: str
    statement: str


@strawberry.input
class ProfileInput:
    display_name: str
    bio: str | None = None
    prompts: list[PromptInput]
    consent_preferences: list[ConsentPreferenceInput]
    locale: str | None = None

    def as_struct_data(self) -> dict[str, object]:
        """The camelCase mapping :class:`app.domain.quiz.ProfileInput` validates."""
        return {
            "displayName": self.display_name,
            "bio": self.bio,
            "prompts": [{"question": p.question, "answer": p.answer} for p in self.prompts],
            "consentPreferences": [{"topic": c.topic, "statement": c.statement} for c in self.consent_preferences],
            "locale": self.locale,
        }


@strawberry.type
class Prompt:
    question: str
    answer: str


@strawberry.type
class ConsentPreference:
    topic: str
    statement: str


@strawberry.type
class Profile:
    user_id: strawberry.ID
    display_name: str
    bio: str | None
    prompts: list[Prompt]
    consent_preferences: list[ConsentPreference]
    locale: str | None
    updated_at: datetime

    @classmethod
    def of(cls, record: ProfileRecord) -> Profile:
        return cls(
            user_id=strawberry.ID(str(record.user_id)),
            display_name=record.display_name,
            bio=record.bio,
            prompts=[Prompt(question=p.question, answer=p.answer) for p in record.prompts],
            consent_preferences=[
                ConsentPreference(topic=c.topic, statement=c.statement) for c in record.consent_preferences
            ],
            locale=record.locale,
            updated_at=record.updated_at,
        )


@strawberry.type
class Conversation:
    id: strawberry.ID
    participant_ids: list[strawberry.ID]
    unlock_state: UnlockState = strawberry.field(
        description="The state as the caller sees it: UNLOCKED or LOCKED for both, or the caller's own "
        "RETRY_AVAILABLE/COOLDOWN after their failed attempt (the other person's is theirs)."
    )
    unlocked_at: datetime | None
    updated_at: datetime
    retry_available_at: datetime | None = strawberry.field(
        default=None, description="When the caller may take a new quiz (RETRY_AVAILABLE or COOLDOWN)."
    )

    @classmethod
    def of(cls, record: ConversationRecord, view: ParticipantView | None = None) -> Conversation:
        """``view``: the caller's own state (``participant_view``); without it the shared state."""
        return cls(
            id=strawberry.ID(str(record.id)),
            participant_ids=[strawberry.ID(str(p)) for p in record.participant_ids],
            unlock_state=view.unlock_state if view else record.unlock_state,
            unlocked_at=record.unlocked_at,
            updated_at=record.updated_at,
            retry_available_at=view.retry_available_at if view else None,
        )


@strawberry.type(description="A conversation's unlock status, as streamed by the connectionKeyStatus subscription.")
class ConnectionKeyStatus:
    conversation_id: strawberry.ID
    unlock_state: UnlockState
    attempt_id: strawberry.ID | None = strawberry.field(
        description="The attempt that caused this state; null in the first message, which is read from the "
        "conversation itself."
    )
    score: float | None = strawberry.field(description="That attempt's score; null when attemptId is null.")
    updated_at: datetime

    @classmethod
    def of_status(cls, status: ConversationStatusChanged) -> ConnectionKeyStatus:
        """A change published by the unlock orchestrator."""
        return cls(
            conversation_id=strawberry.ID(str(status.conversation_id)),
            unlock_state=status.unlock_state,
            attempt_id=strawberry.ID(str(status.attempt_id)) if status.attempt_id is not None else None,
            score=status.score,
            updated_at=status.updated_at,
        )

    @classmethod
    def for_viewer(cls, status: ConversationStatusChanged, viewer: uuid.UUID) -> ConnectionKeyStatus | None:
        """``status`` as ``viewer`` should see it: ``None`` for the other participant's own retry state
        (RETRY_AVAILABLE, COOLDOWN), which is not the viewer's; shared changes (UNLOCKED, LOCKED) go to
        both."""
        if status.unlock_state in _OWN_STATES and status.requester_id not in (None, viewer):
            return None
        return cls.of_status(status)

    @classmethod
    def of_conversation(cls, record: ConversationRecord, view: ParticipantView | None = None) -> ConnectionKeyStatus:
        """The current state, read from the conversation row (which records no attempt); ``view``: the
        subscriber's own state."""
        return cls(
            conversation_id=strawberry.ID(str(record.id)),
            unlock_state=view.unlock_state if view else record.unlock_state,
            attempt_id=None,
            score=None,
            updated_at=record.updated_at,
        )


@strawberry.enum(description="Which push service reaches the device.")
class DevicePlatform(enum.Enum):
    ANDROID = "android"
    IOS = "ios"


@strawberry.type(description="A registered device; the push token itself is never echoed back.")
class Device:
    id: strawberry.ID
    platform: DevicePlatform
    registered_at: datetime

    @classmethod
    def of(cls, record: DeviceRecord) -> Device:
        return cls(
            id=strawberry.ID(str(record.id)), platform=DevicePlatform(record.platform), registered_at=record.updated_at
        )
