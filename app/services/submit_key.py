"""Use case: score a submitted quiz, then record the attempt and emit QUIZ_COMPLETED atomically
(through :class:`app.services.attempt_writer.AttemptWriter`).

Before anything expensive, the key's row is read (one query): a superseded, revoked, unknown or already
submitted key never reaches a scorer, and the signed claims must equal the row. A submission whose
answers could not all be scored (scorer and fallback down) records nothing and answers UNAVAILABLE.

Submitting is idempotent for the same caller, payload and answers (a retry after a lost response): it
gets the recorded result again, recognised by an HMAC of the request stored on the attempt. While the
first submission is still being scored, the retry answers UNAVAILABLE with a short Retry-After (1 s).
Anything else sent for a submitted key is PAYLOAD_REPLAYED.
"""

from __future__ import annotations

import contextlib
import hmac
import uuid

import msgspec
import structlog

from app.adapters.cache import CacheUnavailable
from app.db.errors import DatabaseUnavailable, is_database_outage
from app.db.key_store import KeyRow, KeyStatus
from app.domain.contract import (
    AnswerInput,
    ConnectionKeyResponseInput,
    ConnectionKeyResult,
    QuestionScore,
    canonical_submission,
)
from app.domain.quiz import IssuedQuiz, QuestionKind, UnlockState
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


def _digest_key(key_id: uuid.UUID) -> str:
    return f"submit-digest:{key_id}"


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

    async def _key_row(self, claims: PayloadClaims) -> KeyRow:
        """Read the key's row (one query, before any decryption or scoring) and compare the signed claims
        with it: a payload re-signed with a known key cannot name another requester, target or
        conversation, nor a later expiry."""
        try:
            row = await self._deps.keys.key_row(claims.key_id)
        except Exception as exc:
            if is_database_outage(exc):
                raise DatabaseUnavailable(retry_after=self._deps.settings.database.busy_retry_after_seconds) from exc
            raise
        if row is None:
            raise ServiceError(ErrorCode.PAYLOAD_INVALID, "The signed payload names an unknown quiz.")
        signed = (claims.requester_id, claims.target_id, claims.conversation_id, claims.issued_at, claims.expires_at)
        stored = (
            row.requester_id,
            row.target_id,
            row.conversation_id,
            int(row.issued_at.timestamp()),
            int(row.expires_at.timestamp()),
        )
        if signed != stored:
            log.warning("signed claims differ from the key row", key_id=str(claims.key_id))
            raise ServiceError(ErrorCode.PAYLOAD_INVALID, "The signed payload does not match its quiz.")
        return row

    async def _refuse_moderation_locked(self, row: KeyRow) -> None:
        """FORBIDDEN while a moderator's lock holds on the key's conversation (before anything is
        scored or recorded): a quiz issued before the lock is not answered under it. The LOCK also
        supersedes the pair's open keys, so a submit that raced it is refused when the key is claimed."""
        try:
            conversation = await self._deps.profiles.get_conversation(row.conversation_id)
        except Exception as exc:
            if is_database_outage(exc):
                raise DatabaseUnavailable(retry_after=self._deps.settings.database.busy_retry_after_seconds) from exc
            raise
        if conversation is not None and conversation.moderation_locked_at is not None:
            raise ServiceError(ErrorCode.FORBIDDEN, "A moderator has locked this conversation; this quiz is closed.")

    @staticmethod
    def _refuse_closed(status: str) -> None:
        if status == KeyStatus.SUPERSEDED:
            raise ServiceError(ErrorCode.CONFLICT, "A newer quiz was issued; answer that one instead.")
        if status == KeyStatus.REVOKED:
            raise ServiceError(ErrorCode.NOT_FOUND, "A participant of this quiz has left Connection Key.")
        if status != KeyStatus.ISSUED:
            raise ServiceError(ErrorCode.PAYLOAD_REPLAYED, "This quiz has already been submitted.")

    async def _recorded(self, key_id: uuid.UUID, digest: str) -> ConnectionKeyResult:
        """The recorded result, for the same caller sending the same payload and answers again (a retry
        after a lost response); anything else is PAYLOAD_REPLAYED."""
        attempt = await self._deps.keys.attempt_for_key(key_id)
        if attempt is None or attempt.request_digest is None or not hmac.compare_digest(attempt.request_digest, digest):
            raise ServiceError(ErrorCode.PAYLOAD_REPLAYED, "This quiz has already been submitted.")
        log.info("submission repeated; recorded result returned", key_id=str(key_id))
        return ConnectionKeyResult(
            attempt_id=attempt.id,
            score=attempt.score,
            passed=attempt.passed,
            unlock_state=UnlockState(attempt.unlock_state),
            breakdown=[
                QuestionScore(
                    uuid.UUID(str(line["question_id"])),
                    QuestionKind(line["kind"]),
                    line["scorer"],
                    line["score"],
                    line["passed"],
                    line.get("fallback_from"),
                )
                for line in attempt.breakdown
            ],
            feedback=attempt.feedback or [],
            retry_available_at=attempt.retry_available_at,
        )

    async def _claim(self, claims: PayloadClaims, digest: str) -> str | None:
        """Spend the payload before the expensive part (scoring runs a model): a second submission, on
        any instance, stops here instead of being scored and then refused by the database's single-use
        check, which stays the guarantee. Returns the claim, or ``None`` when another submission holds
        it; the digest is kept beside the claim so that one can be told apart from a retry."""
        key = f"submit:{claims.key_id}"
        ttl = max(1.0, claims.expires_at - self._deps.clock().timestamp() + 60.0)
        try:
            if not await self._deps.cache.add_if_absent(key, ttl):
                return None
            await self._deps.cache.set(_digest_key(claims.key_id), digest.encode(), ttl)
        except CacheUnavailable:
            raise ServiceError(ErrorCode.UNAVAILABLE, "Submissions are paused for a moment; try again.") from None
        return key

    async def _release(self, claims: PayloadClaims, claim: str) -> None:
        """Nothing was recorded: the same payload may be sent again."""
        await self._deps.cache.release(claim)
        with contextlib.suppress(CacheUnavailable):
            await self._deps.cache.delete(_digest_key(claims.key_id))

    async def _claimed_elsewhere(self, claims: PayloadClaims, digest: str) -> ConnectionKeyResult:
        """Another submission of this payload holds the claim: recorded by now (then the same request gets
        its result), still being scored (the same request: UNAVAILABLE, ask again in a moment), or a
        different request (PAYLOAD_REPLAYED)."""
        row = await self._key_row(claims)
        if row.status == KeyStatus.SUBMITTED:
            return await self._recorded(row.id, digest)
        self._refuse_closed(row.status)
        try:
            theirs = await self._deps.cache.get(_digest_key(claims.key_id))
        except CacheUnavailable:
            theirs = None
        if theirs is not None and not hmac.compare_digest(theirs, digest.encode()):
            raise ServiceError(ErrorCode.PAYLOAD_REPLAYED, "This quiz has already been submitted.")
        raise ServiceError(
            ErrorCode.UNAVAILABLE, "This submission is still being scored; ask again in a moment.", retryAfter=1
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
        client_ip: str | None = None,
        moderator: bool = False,
    ) -> ConnectionKeyResult:
        """Submit ``data`` as ``caller_id``. ``on_behalf`` (service role) may submit for the payload's
        requester; ``path_key_id`` (REST) must be the key the payload was issued for; ``client_ip``
        (end-user calls) is rate limited too. ``moderator``: the caller is a moderator, who may submit for
        the requester too, and the attempt then records (and audits) the caller as its submitter."""
        options = {"path_key_id": path_key_id, "on_behalf": on_behalf, "client_ip": client_ip, "moderator": moderator}
        await self.precheck(caller_id, data, **options)
        return await self.run(caller_id, data, **options)

    async def precheck(
        self,
        caller_id: uuid.UUID,
        data: ConnectionKeyResponseInput,
        *,
        path_key_id: uuid.UUID | None = None,
        on_behalf: bool = False,
        client_ip: str | None = None,
        moderator: bool = False,
    ) -> None:
        """The cheap refusals (signature, key id, who may submit, rate limits; no database), run before
        the admission gate (:class:`app.services.admission.Admitted`) so that a flood of requests refused
        here never takes a place in its line nor skews its estimate. Same arguments as :meth:`__call__`."""
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

    async def run(
        self,
        caller_id: uuid.UUID,
        data: ConnectionKeyResponseInput,
        *,
        path_key_id: uuid.UUID | None = None,
        on_behalf: bool = False,
        client_ip: str | None = None,
        moderator: bool = False,
    ) -> ConnectionKeyResult:
        """The submission itself, once :meth:`precheck` has passed (behind the admission gate)."""
        deps = self._deps
        claims = self._verify(data.signed_payload)  # the claims again: verifying is cheap, and pure
        row = await self._key_row(claims)
        digest = deps.signer.request_digest(data.signed_payload, canonical_submission(caller_id, data.answers))
        if row.status == KeyStatus.SUBMITTED:
            return await self._recorded(row.id, digest)
        await self._refuse_moderation_locked(row)
        self._refuse_closed(row.status)  # superseded, revoked: refused before any scorer runs
        quiz = await self._load(claims)
        answers = self._answers(quiz, claims, data.answers)
        claim = await self._claim(claims, digest)
        if claim is None:
            return await self._claimed_elsewhere(claims, digest)
        try:
            report = await self._runner.score(quiz, answers, quiz.target_locale)
            if report.unscored:
                log.warning(
                    "answers could not be scored; nothing recorded",
                    key_id=str(quiz.key_id),
                    scorers=sorted({o.scorer for o in report.unscored}),
                )
                raise ServiceError(
                    ErrorCode.UNAVAILABLE,
                    "Your answers could not be checked right now; nothing was recorded, send them again shortly.",
                    retryAfter=deps.settings.scoring.outage_retry_after_seconds,
                )
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
                    request_digest=digest,
                )
            )
        except ServiceError as exc:
            if exc.code is ErrorCode.PAYLOAD_REPLAYED:
                # Recorded by another instance meanwhile (its claim failed open): the same request's result.
                return await self._recorded(claims.key_id, digest)
            if exc.code is not ErrorCode.CONFLICT:
                await self._release(claims, claim)
            raise
        except BaseException:
            await self._release(claims, claim)
            raise
        await deps.cache.delete(quiz_cache_key(quiz.key_id))
        log.info("quiz submitted", key_id=str(quiz.key_id), passed=verdict.passed, unlock_state=decision.state.value)
        return ConnectionKeyResult(
            attempt_id=attempt_id,
            score=verdict.score,
            passed=verdict.passed,
            unlock_state=decision.state,
            breakdown=[
                QuestionScore(uuid.UUID(o.question_id), o.kind, o.scorer, o.score, o.passed, o.fallback_from)
                for o in verdict.breakdown
            ],
            feedback=verdict.feedback,
            retry_available_at=decision.retry_available_at,
        )
