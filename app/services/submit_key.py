"""Use case: score a submitted quiz, then record the attempt and emit QUIZ_COMPLETED atomically
(through :class:`app.services.attempt_writer.AttemptWriter`)."""

from __future__ import annotations

import uuid

import msgspec
import structlog

from app.adapters.cache import CacheUnavailable
from app.domain.contract import AnswerInput, ConnectionKeyResponseInput, ConnectionKeyResult, QuestionScore
from app.domain.quiz import IssuedQuiz
from app.domain.scoring import ScoringPolicy, summarise
from app.domain.signing import PayloadClaims, PayloadExpired, PayloadInvalid
from app.errors import ErrorCode, ServiceError
from app.services.attempt_writer import AttemptWriter, PendingAttempt
from app.services.create_key import KeyDependencies, quiz_cache_key, quiz_cache_ref
from app.services.limits import enforce_limit
from app.services.profiles import erased_account
from app.services.scoring_runner import ScoringRunner

__all__ = ["SubmitConnectionKey"]

log = structlog.get_logger(__name__)
_quiz_decoder = msgspec.json.Decoder(IssuedQuiz)


class SubmitConnectionKey:
    """Verify, validate and score; the writer then claims the key and commits attempt + event."""

    def __init__(self, deps: KeyDependencies, runner: ScoringRunner, writer: AttemptWriter) -> None:
        self._deps = deps
        self._runner = runner
        self._writer = writer
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
        # Both data keys are needed (the writer seals the responses with the requester's): loaded or made
        # here, outside the writer's transaction. An erased participant ends the quiz with a typed error.
        keyring = await self._deps.encryption.keyring([claims.requester_id, claims.target_id], create=True)
        if keyring.is_destroyed(claims.target_id):
            raise ServiceError(ErrorCode.NOT_FOUND, "This person has left Connection Key; the quiz cannot be answered.")
        if keyring.is_destroyed(claims.requester_id):
            raise erased_account()
        cached = await self._deps.cache.get(quiz_cache_key(claims.key_id))
        if cached is not None:
            token = cached.decode()
            # Sealed by whichever instance issued the quiz: its key may be newer than the one cached here.
            keyring = await self._deps.encryption.keyring_covering({claims.target_id: [token]})
            return _quiz_decoder.decode(keyring.open(claims.target_id, quiz_cache_ref(claims.key_id), token))
        found = await self._deps.keys.get_quiz(claims.key_id)
        if found is None:
            raise ServiceError(ErrorCode.PAYLOAD_INVALID, "The signed payload names an unknown quiz.")
        quiz, _ = found
        target = await self._deps.profiles.get_profile(quiz.target_id)
        return msgspec.structs.replace(
            quiz, target_name=target.display_name if target else "them", target_locale=target.locale if target else None
        )

    async def _claim(self, claims: PayloadClaims) -> str:
        """Spend the payload before the expensive part (scoring runs a model): a replay, on any instance,
        is refused here instead of being scored and then refused by the database's single-use check,
        which stays the guarantee."""
        key = f"submit:{claims.key_id}"
        ttl = max(1.0, claims.expires_at - self._deps.clock().timestamp() + 60.0)
        try:
            claimed = await self._deps.cache.add_if_absent(key, ttl)
        except CacheUnavailable:
            raise ServiceError(ErrorCode.UNAVAILABLE, "Submissions are paused for a moment; try again.") from None
        if not claimed:
            raise ServiceError(ErrorCode.PAYLOAD_REPLAYED, "This quiz has already been submitted.")
        return key

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
        client_ip: str | None = None,
        moderator: bool = False,
    ) -> ConnectionKeyResult:
        """Submit ``data`` as ``caller_id``. ``on_behalf`` (service role) may submit for the payload's
        requester; ``path_key_id`` (REST) must be the key the payload was issued for; ``client_ip``
        (end-user calls) is rate limited too. ``moderator``: the caller is a moderator, who may submit for
        the requester too, and the attempt then records (and audits) the caller as its submitter."""
        deps = self._deps
        claims = self._verify(data.signed_payload)
        if path_key_id is not None and path_key_id != claims.key_id:
            raise ServiceError(ErrorCode.BAD_USER_INPUT, "The signed payload belongs to another key.", field="id")
        if claims.requester_id != caller_id and not (on_behalf or moderator):
            raise ServiceError(ErrorCode.FORBIDDEN, "This quiz was issued to someone else.")
        if moderator and not on_behalf and caller_id == claims.target_id:
            # The quiz is about them: they know every answer. Another moderator must do it.
            raise ServiceError(ErrorCode.FORBIDDEN, "Moderators may not submit quizzes about themselves.")
        if deps.settings.rate_limit.enabled:
            if client_ip:
                await enforce_limit(
                    deps.limiter, f"submit:ip:{client_ip}", deps.settings.rate_limit.submit_per_ip_per_minute
                )
            await enforce_limit(
                deps.limiter, f"submit:user:{claims.requester_id}", deps.settings.rate_limit.submit_per_user_per_minute
            )
        quiz = await self._load(claims)
        answers = self._answers(quiz, claims, data.answers)
        claim = await self._claim(claims)
        try:
            report = await self._runner.score(quiz, answers, quiz.target_locale)
            verdict = summarise(quiz.questions, report.outcomes, self._policy, quiz.target_name)
            attempt_id = uuid.uuid4()
            decision = await self._writer.write(
                PendingAttempt(
                    attempt_id,
                    quiz,
                    verdict,
                    data.answers,
                    report.shadow,
                    report.variants,
                    submitted_by=caller_id if moderator and claims.requester_id != caller_id else None,
                )
            )
        except ServiceError as exc:
            if exc.code not in (ErrorCode.PAYLOAD_REPLAYED, ErrorCode.CONFLICT):
                await deps.cache.release(claim)  # nothing was recorded: the same payload may be sent again
            raise
        except BaseException:
            await deps.cache.release(claim)
            raise
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
