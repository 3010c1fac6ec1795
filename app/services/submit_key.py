"""Use case: score a submitted quiz, record the attempt and emit QUIZ_COMPLETED, atomically."""

from __future__ import annotations

import uuid

import msgspec
import structlog

from app.db.key_store import AttemptRow, KeyStatus
from app.db.outbox_store import new_envelope
from app.domain.contract import AnswerInput, ConnectionKeyResponseInput, ConnectionKeyResult, QuestionScore
from app.domain.events import EventType, QuizCompleted
from app.domain.quiz import IssuedQuiz
from app.domain.scoring import ScoringPolicy, summarise
from app.domain.signing import PayloadClaims, PayloadExpired, PayloadInvalid
from app.domain.unlock_rules import WINDOW, decide_after_attempt
from app.errors import ErrorCode, ServiceError
from app.services.create_key import KeyDependencies, quiz_cache_key
from app.services.limits import enforce_limit
from app.services.scoring_runner import ScoringRunner

__all__ = ["SubmitConnectionKey"]

log = structlog.get_logger(__name__)
_quiz_decoder = msgspec.json.Decoder(IssuedQuiz)
_json = msgspec.json.Encoder()


class SubmitConnectionKey:
    """Verify, validate, score, then claim the key and write attempt + event in one transaction."""

    def __init__(self, deps: KeyDependencies, runner: ScoringRunner) -> None:
        self._deps = deps
        self._runner = runner
        scoring = deps.settings.scoring
        self._policy = ScoringPolicy(
            weights=dict(scoring.weights),
            pass_threshold=scoring.pass_threshold,
            question_pass_threshold=scoring.question_pass_threshold,
            consent_must_all_pass=scoring.consent_must_all_pass,
        )

    def _verify(self, payload: str) -> PayloadClaims:
        try:
            return self._deps.signer.verify(payload, self._deps.clock())
        except PayloadExpired:
            raise ServiceError(ErrorCode.PAYLOAD_EXPIRED, "This quiz has expired; start a new one.") from None
        except PayloadInvalid as exc:
            raise ServiceError(ErrorCode.PAYLOAD_INVALID, f"The signed payload is not valid: {exc}.") from None

    async def _load(self, claims: PayloadClaims) -> IssuedQuiz:
        cached = await self._deps.cache.get(quiz_cache_key(claims.key_id))
        if cached is not None:
            return _quiz_decoder.decode(cached)
        found = await self._deps.keys.get_quiz(claims.key_id)
        if found is None:
            raise ServiceError(ErrorCode.PAYLOAD_INVALID, "The signed payload names an unknown quiz.")
        quiz, _ = found
        target = await self._deps.profiles.get_profile(quiz.target_id)
        return msgspec.structs.replace(
            quiz, target_name=target.display_name if target else "them", target_locale=target.locale if target else None
        )

    @staticmethod
    def _answers(quiz: IssuedQuiz, claims: PayloadClaims, answers: list[AnswerInput]) -> dict[str, AnswerInput]:
        if [q.id for q in quiz.questions] != claims.question_ids:
            raise ServiceError(ErrorCode.PAYLOAD_INVALID, "The signed payload does not match its quiz.")
        expected = {str(q.id) for q in quiz.questions}
        by_id: dict[str, AnswerInput] = {}
        for index, answer in enumerate(answers):
            question_id = str(answer.question_id)
            if question_id not in expected:
                raise ServiceError(
                    ErrorCode.BAD_USER_INPUT,
                    "An answer refers to a question that is not in this quiz.",
                    field=f"answers[{index}].questionId",
                )
            if question_id in by_id:
                raise ServiceError(
                    ErrorCode.BAD_USER_INPUT, "A question is answered twice.", field=f"answers[{index}].questionId"
                )
            by_id[question_id] = answer
        missing = len(expected - set(by_id))
        if missing:
            raise ServiceError(ErrorCode.BAD_USER_INPUT, f"{missing} question(s) have no answer.", field="answers")
        return by_id

    async def __call__(
        self,
        caller_id: uuid.UUID,
        data: ConnectionKeyResponseInput,
        *,
        path_key_id: uuid.UUID | None = None,
        on_behalf: bool = False,
    ) -> ConnectionKeyResult:
        """Submit ``data`` as ``caller_id``. ``on_behalf`` (service role) may submit for the payload's
        requester; ``path_key_id`` (REST) must be the key the payload was issued for."""
        deps = self._deps
        claims = self._verify(data.signed_payload)
        if path_key_id is not None and path_key_id != claims.key_id:
            raise ServiceError(ErrorCode.BAD_USER_INPUT, "The signed payload belongs to another key.", field="id")
        if claims.requester_id != caller_id and not on_behalf:
            raise ServiceError(ErrorCode.FORBIDDEN, "This quiz was issued to someone else.")
        if deps.settings.rate_limit.enabled:
            await enforce_limit(
                deps.limiter, f"submit:user:{claims.requester_id}", deps.settings.rate_limit.submit_per_user_per_minute
            )
        quiz = await self._load(claims)
        answers = self._answers(quiz, claims, data.answers)
        outcomes = await self._runner.score(quiz, answers, quiz.target_locale)
        verdict = summarise(quiz.questions, outcomes, self._policy, quiz.target_name)
        now = deps.clock()
        attempt_id = uuid.uuid4()
        elapsed = [a.elapsed_ms for a in data.answers if a.elapsed_ms is not None]
        async with deps.db.transaction():
            if not await deps.keys.claim(quiz.key_id, now):
                status = await deps.keys.status(quiz.key_id)
                if status == KeyStatus.SUPERSEDED:
                    raise ServiceError(ErrorCode.CONFLICT, "A newer quiz was issued; answer that one instead.")
                raise ServiceError(ErrorCode.PAYLOAD_REPLAYED, "This quiz has already been submitted.")
            failures = []
            if not verdict.passed:  # a pass unlocks whatever the history; only a failure needs it
                failures = await deps.keys.recent_failures(quiz.requester_id, quiz.conversation_id, now - WINDOW)
                failures.append(now)
            decision = decide_after_attempt(verdict.passed, failures, now, deps.retry_policy)
            await deps.keys.insert_attempt(
                AttemptRow(
                    id=attempt_id,
                    connection_key_id=quiz.key_id,
                    conversation_id=quiz.conversation_id,
                    requester_id=quiz.requester_id,
                    target_id=quiz.target_id,
                    responses=_json.encode(data.answers).decode(),
                    total_elapsed_ms=sum(elapsed) if elapsed else None,
                    score=verdict.score,
                    passed=verdict.passed,
                    breakdown=_json.encode(verdict.breakdown).decode(),
                    feedback=_json.encode(verdict.feedback).decode(),
                    unlock_state=decision.state.value,
                    retry_available_at=decision.retry_available_at,
                    started_at=quiz.issued_at,
                    submitted_at=now,
                )
            )
            event = QuizCompleted(
                attempt_id=attempt_id,
                key_id=quiz.key_id,
                conversation_id=quiz.conversation_id,
                requester_id=quiz.requester_id,
                target_id=quiz.target_id,
                score=verdict.score,
                passed=verdict.passed,
                unlock_state=decision.state,
                retry_available_at=decision.retry_available_at,
                completed_at=now,
            )
            await deps.outbox.append([new_envelope(EventType.QUIZ_COMPLETED, quiz.conversation_id, event, now)])
        deps.on_events_written()
        await deps.cache.delete(quiz_cache_key(quiz.key_id))
        log.info("quiz submitted", key_id=str(quiz.key_id), passed=verdict.passed, unlock_state=decision.state.value)
        return ConnectionKeyResult(
            attempt_id=attempt_id,
            score=verdict.score,
            passed=verdict.passed,
            unlock_state=decision.state,
            breakdown=[
                QuestionScore(uuid.UUID(o.question_id), o.kind, o.scorer, o.score, o.passed) for o in verdict.breakdown
            ],
            feedback=verdict.feedback,
            retry_available_at=decision.retry_available_at,
        )
