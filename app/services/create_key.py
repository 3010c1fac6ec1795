"""Use case: issue a connection key (a signed quiz) from a requester to a target."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec
import structlog

from app.adapters.cache import Cache
from app.adapters.rate_limit import RateLimiter
from app.adapters.task_queue import QueueFull, TaskQueue
from app.db.engine import Database
from app.db.errors import DatabaseUnavailable, is_database_outage
from app.db.key_store import KeyStore, is_open_key_conflict
from app.db.outbox_store import OutboxStore, new_envelope
from app.db.profile_store import ProfileRecord, ProfileStore
from app.domain.contract import ConnectionKeyPayload, PublicQuestion
from app.domain.events import EventEnvelope, EventType, KeyCreated
from app.domain.field_crypto import FieldRef, Keyring
from app.domain.generation import GenerationError, QuizShape, generate_quiz
from app.domain.quiz import IssuedQuiz, UnlockState
from app.domain.signing import PayloadSigner
from app.domain.unlock_rules import WINDOW, RetryPolicy, may_start_attempt
from app.errors import ErrorCode, ServiceError
from app.services.encryption import FieldEncryption
from app.services.limits import cooling_down, enforce_limit
from app.services.template_library import TemplateLibrary
from app.settings import Settings

__all__ = ["CreateConnectionKey", "KeyDependencies", "public_payload", "quiz_cache_key", "quiz_cache_ref"]

log = structlog.get_logger(__name__)


def quiz_cache_key(key_id: uuid.UUID) -> str:
    return f"quiz:{key_id}"


def quiz_cache_ref(key_id: uuid.UUID) -> FieldRef:
    """The cached quiz holds the target's texts and answer keys: it is sealed with the target's data key
    too, so a Redis snapshot holds no plaintext and an erased target's cached quiz no longer opens."""
    return FieldRef("cache", "quiz", key_id)


def public_payload(quiz: IssuedQuiz) -> ConnectionKeyPayload:
    """The client's view of a quiz: questions without answer keys, and the signed payload."""
    return ConnectionKeyPayload(
        id=quiz.key_id,
        conversation_id=quiz.conversation_id,
        target_user_id=quiz.target_id,
        questions=[PublicQuestion(q.id, q.kind, q.prompt, q.choices) for q in quiz.questions],
        signed_payload=quiz.signed_payload,
        expires_at=quiz.expires_at,
    )


@dataclass(frozen=True, slots=True)
class KeyDependencies:
    """What the create and submit use cases share."""

    settings: Settings
    db: Database
    profiles: ProfileStore
    keys: KeyStore
    outbox: OutboxStore
    cache: Cache
    limiter: RateLimiter
    signer: PayloadSigner
    clock: Callable[[], datetime]
    on_events_written: Callable[[], None]
    encryption: FieldEncryption

    @property
    def retry_policy(self) -> RetryPolicy:
        retry = self.settings.retry
        return RetryPolicy(retry.cooldown_seconds, retry.max_attempts_per_day)


class CreateConnectionKey:
    """Checks, then generates on the task queue: limits, target, conversation state, retry policy."""

    def __init__(self, deps: KeyDependencies, library: TemplateLibrary, queue: TaskQueue) -> None:
        self._deps = deps
        self._library = library
        self._queue = queue
        self._encoder = msgspec.json.Encoder()
        quiz = deps.settings.quiz
        self._shape = QuizShape(
            quiz.comprehension_questions,
            quiz.consent_questions,
            quiz.free_response_questions,
            quiz.choices_per_question,
            free_text_comprehension=quiz.comprehension_format == "free_text",
        )

    async def __call__(
        self, requester_id: uuid.UUID, target_id: uuid.UUID, *, client_ip: str | None = None
    ) -> ConnectionKeyPayload:
        """Issue a quiz about ``target_id`` to ``requester_id``; ``client_ip`` (end-user calls) is limited too."""
        await self.precheck(requester_id, target_id, client_ip=client_ip)
        return await self.run(requester_id, target_id, client_ip=client_ip)

    async def precheck(self, requester_id: uuid.UUID, target_id: uuid.UUID, *, client_ip: str | None = None) -> None:
        """The cheap refusals (self-target, rate limits; no database), run before the admission gate
        (:class:`app.services.admission.Admitted`) so that a flood of requests refused here never takes a
        place in its line nor skews its estimate. Same arguments as :meth:`__call__`."""
        deps = self._deps
        if requester_id == target_id:
            raise ServiceError(ErrorCode.BAD_USER_INPUT, "You cannot take your own quiz.", field="targetUserId")
        if deps.settings.rate_limit.enabled:
            limits = deps.settings.rate_limit
            if client_ip:
                await enforce_limit(deps.limiter, f"create:ip:{client_ip}", limits.create_per_ip_per_minute)
            await enforce_limit(deps.limiter, f"create:user:{requester_id}", limits.create_per_user_per_minute)
            await enforce_limit(
                deps.limiter, f"create:pair:{requester_id}:{target_id}", limits.create_per_target_per_minute
            )

    async def run(
        self, requester_id: uuid.UUID, target_id: uuid.UUID, *, client_ip: str | None = None
    ) -> ConnectionKeyPayload:
        """The create itself, once :meth:`precheck` has passed (behind the admission gate)."""
        deps = self._deps
        target = await deps.profiles.get_profile(target_id)
        if target is None:
            raise ServiceError(ErrorCode.NOT_FOUND, "That person has no Connection Key profile.", field="targetUserId")
        now = deps.clock()
        conversation = await deps.profiles.get_or_create_conversation(requester_id, target_id, now)
        if conversation.unlock_state is UnlockState.UNLOCKED:
            raise ServiceError(ErrorCode.CONFLICT, "This conversation is already unlocked.")
        if conversation.moderation_locked_at is not None:  # until a moderator lifts it (moderation_rules)
            raise ServiceError(ErrorCode.FORBIDDEN, "A moderator has locked this conversation; no new quiz for now.")
        failures = await deps.keys.recent_failures(requester_id, conversation.id, now - WINDOW)
        retry_at = may_start_attempt(failures, now, deps.retry_policy)
        if retry_at is not None:
            raise cooling_down(retry_at, now)
        try:
            quiz = await self._queue.run(
                lambda: self._generate(requester_id, target, conversation.id),
                deps.settings.queue.job_timeout_seconds,
            )
        except QueueFull:
            raise ServiceError(ErrorCode.UNAVAILABLE, "Quiz generation is busy; try again shortly.") from None
        except TimeoutError:
            raise ServiceError(ErrorCode.UNAVAILABLE, "Quiz generation took too long; try again.") from None
        return public_payload(quiz)

    async def _issue(self, quiz: IssuedQuiz, keyring: Keyring, envelope: EventEnvelope) -> None:
        """Supersede the pair's open key and insert this one, in one write transaction that a cancelled
        request cannot interrupt. The database allows one ISSUED key per (requester, conversation): when a
        concurrent create for the pair (another instance, on PostgreSQL) inserted its key between our
        supersede and our insert, the unique index refuses ours; superseding again then finds the
        winner's committed key, so one retry normally succeeds. A second loss answers CONFLICT."""
        deps = self._deps

        async def supersede_and_insert() -> None:
            await deps.keys.supersede_open_keys(quiz.requester_id, quiz.conversation_id)
            await deps.keys.insert_quiz(quiz, deps.signer.active_key_id, keyring)
            await deps.outbox.append([envelope])

        for attempt in range(2):
            try:
                await deps.db.write(supersede_and_insert)
                return
            except ServiceError:
                raise
            except Exception as exc:
                if is_open_key_conflict(exc):
                    log.info("concurrent create for the pair", key_id=str(quiz.key_id), attempt=attempt + 1)
                    continue
                if is_database_outage(exc):
                    raise DatabaseUnavailable(retry_after=deps.settings.database.busy_retry_after_seconds) from exc
                raise
        raise ServiceError(ErrorCode.CONFLICT, "Another quiz for this conversation is being issued; try again.")

    async def _generate(self, requester_id: uuid.UUID, target: ProfileRecord, conversation_id: uuid.UUID) -> IssuedQuiz:
        deps = self._deps
        templates = await self._library.for_locale(target.locale)
        difficulty = deps.settings.quiz.default_difficulty
        try:
            questions = generate_quiz(target.as_target(), templates, self._shape, difficulty, random.Random())
        except GenerationError as exc:
            log.error("quiz generation failed", reason=str(exc))
            raise ServiceError(ErrorCode.UNAVAILABLE, "A quiz could not be generated right now.") from None
        now = deps.clock()
        key_id = uuid.uuid4()
        claims = deps.signer.claims_for(
            key_id=key_id,
            conversation_id=conversation_id,
            requester_id=requester_id,
            target_id=target.user_id,
            question_ids=[q.id for q in questions],
            now=now,
        )
        quiz = IssuedQuiz(
            key_id=key_id,
            conversation_id=conversation_id,
            requester_id=requester_id,
            target_id=target.user_id,
            target_name=target.display_name,
            difficulty=difficulty,
            questions=questions,
            signed_payload=deps.signer.sign(claims),
            issued_at=now,
            expires_at=claims.expires_at_datetime,
            target_locale=target.locale,
        )
        event = KeyCreated(key_id, conversation_id, requester_id, target.user_id, quiz.expires_at)
        keyring = await deps.encryption.keyring([target.user_id], create=True)
        if keyring.is_destroyed(target.user_id):  # erased between the profile read and now
            raise ServiceError(ErrorCode.NOT_FOUND, "That person has no Connection Key profile.", field="targetUserId")
        await self._issue(quiz, keyring, new_envelope(EventType.KEY_CREATED, conversation_id, event, now))
        deps.on_events_written()
        sealed = keyring.seal(target.user_id, quiz_cache_ref(key_id), self._encoder.encode(quiz).decode())
        await deps.cache.set(quiz_cache_key(key_id), sealed.encode(), deps.signer.ttl_seconds)
        log.info("connection key issued", key_id=str(key_id), questions=len(questions))
        return quiz
