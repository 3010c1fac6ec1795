"""The ``llm.rubric`` scorer: free responses graded by a chat model against a rubric.

Flow of :meth:`LlmRubricScorer.score`: refuse at once when no endpoint is configured or the circuit is
open; score empty answers 0 locally; run the injection guard on each answer; send the rest in calls of
up to ``max_answers_per_call`` answers (concurrently, at most ``max_concurrency`` calls in flight), each
call retried with exponential backoff and jitter; combine the model's levels with the rubric, capping
flagged answers. Any call that still fails makes the whole batch raise
:class:`plugins.scorer.ScorerUnavailableError`, so the service uses its fallback scorer: a failure is
never a silent pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
import msgspec
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from plugins.scorer import ScoreRequest, ScoreResult, ScorerUnavailableError
from scorers.llm_rubric.circuit_breaker import CircuitBreaker, CircuitState
from scorers.llm_rubric.client import CallFailedError, ChatClient
from scorers.llm_rubric.config import LlmRubricConfig
from scorers.llm_rubric.injection import detect_injection, strip_invisible
from scorers.llm_rubric.rubric import AnswerItem, ReplyError, Rubric, combine, feedback_for, parse_reply, render_prompts

__all__ = ["FLAG_INJECTION", "FLAG_REFERENCE_INJECTION", "FLAG_TRUNCATED", "LlmRubricScorer"]

log = structlog.get_logger(__name__)

FLAG_INJECTION = "prompt_injection"
"""The answer tries to instruct the grader; its score is capped whatever the model said."""
FLAG_TRUNCATED = "truncated"
"""The answer was longer than ``max_answer_chars`` and only its start was graded."""
FLAG_REFERENCE_INJECTION = "reference_injection"
"""The person's own texts look like an injection attempt: for review only, the answerer is not penalised."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An answer ready to send, with what the guard found."""

    request: ScoreRequest
    item: AnswerItem  # id filled in per call
    flags: tuple[str, ...]
    injection: bool


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, CallFailedError) and exc.retryable


class LlmRubricScorer:
    """Grades ``FREE_RESPONSE`` answers with an OpenAI-compatible chat model. Not deterministic.

    An async context manager: ``__aenter__`` opens the HTTP client, ``__aexit__`` closes it. ``score``
    also works without entering (it opens the client on first use); then call :meth:`aclose` when done.
    ``clock`` (monotonic seconds) drives the circuit breaker and ``sleep`` the waits between retries;
    ``transport`` replaces the network. All three are for tests.
    """

    name = "llm.rubric"
    version = "1.0.0"
    kinds = frozenset({"FREE_RESPONSE"})
    deterministic = False

    def __init__(
        self,
        config: LlmRubricConfig,
        rubric: Rubric,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = config
        self._rubric = rubric
        self._sleep = sleep
        self._transport = transport
        self._breaker = CircuitBreaker(config.breaker_failure_threshold, config.breaker_reset_seconds, clock)
        # base, 2 x base, 4 x base... plus up to base of jitter, so concurrent retries spread out.
        self._backoff = wait_exponential(
            multiplier=config.backoff_base_seconds, max=config.max_backoff_seconds
        ) + wait_random(0, config.backoff_base_seconds)
        self._client: ChatClient | None = None
        self._semaphore: asyncio.Semaphore | None = None

    @property
    def circuit(self) -> CircuitState:
        """The circuit breaker's state."""
        return self._breaker.state

    async def __aenter__(self) -> Self:
        if self._config.configured:
            self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (a later ``score`` opens a new one)."""
        client, self._client, self._semaphore = self._client, None, None
        if client is not None:
            await client.aclose()

    def describe(self) -> Mapping[str, Any]:
        """For ``/ready``: whether an endpoint is set, the model and the circuit state. No URL, no key."""
        return {
            "endpoint_configured": self._config.configured,
            "model": self._config.model,
            "circuit": self._breaker.state.value,
        }

    def _open(self) -> tuple[ChatClient, asyncio.Semaphore]:
        # Created on the running loop (in __aenter__ or the first score), never at registration.
        if self._client is None or self._semaphore is None:
            self._client = ChatClient(
                self._config.completions_url,
                self._config.model,
                api_key=self._config.api_key,
                timeout_seconds=self._config.timeout_seconds,
                max_connections=self._config.max_concurrency,
                transport=self._transport,
            )
            self._semaphore = asyncio.Semaphore(self._config.max_concurrency)
        return self._client, self._semaphore

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """One result per request, in order. Raises ``ScorerUnavailableError`` when the model cannot
        grade the batch (not configured, circuit open, a call failed after its retries)."""
        if not self._config.configured:
            raise ScorerUnavailableError("llm.rubric: no endpoint configured (base_url is empty)")
        if self._breaker.state is CircuitState.OPEN:
            raise ScorerUnavailableError(f"llm.rubric: circuit open for {self._breaker.retry_after():.1f}s more")
        results: list[ScoreResult | None] = [None] * len(batch)
        pending: list[tuple[int, _Prepared]] = []
        for index, request in enumerate(batch):
            prepared = self._prepare(request)
            if prepared is None:
                results[index] = ScoreResult(request.question_id, 0.0, feedback=self._rubric.feedback.empty)
            else:
                pending.append((index, prepared))
        size = self._config.max_answers_per_call
        chunks = [pending[start : start + size] for start in range(0, len(pending), size)]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._grade_chunk([p for _, p in chunk])) for chunk in chunks]
        except* ScorerUnavailableError as failures:
            # The other calls were cancelled; one reason is enough for the service's log.
            raise failures.exceptions[0] from None
        for chunk, task in zip(chunks, tasks, strict=True):
            for (index, prepared), levels in zip(chunk, task.result(), strict=True):
                results[index] = self._result(prepared, levels)
        return [r for r in results if r is not None]

    def _prepare(self, request: ScoreRequest) -> _Prepared | None:
        """Sanitise, cut and check one answer; ``None`` when it is empty."""
        limit = self._config.max_answer_chars
        answer = strip_invisible(request.response).strip()
        if not answer:
            return None
        flags: list[str] = []
        # The guard reads the full original text: hidden characters and a tail past the cut still count.
        patterns = detect_injection(request.response, schema_keys=self._rubric.criterion_names)
        if patterns:
            flags.append(FLAG_INJECTION)
            log.info("llm rubric: answer flagged", question_id=request.question_id, patterns=list(patterns))
        if len(answer) > limit:
            answer = answer[:limit]
            flags.append(FLAG_TRUNCATED)
        references = [strip_invisible(text).strip()[:limit] for text in request.references]
        if any(detect_injection(text) for text in request.references):
            flags.append(FLAG_REFERENCE_INJECTION)
        item = AnswerItem(
            id="",
            question=strip_invisible(request.prompt)[:limit],
            topic=strip_invisible(request.topic or "")[:limit],
            their_words=references[0] if references else "",
            their_boundaries=references[1:],
            answer=answer,
        )
        return _Prepared(request, item, tuple(flags), injection=bool(patterns))

    def _result(self, prepared: _Prepared, levels: Mapping[str, float]) -> ScoreResult:
        verdict = combine(self._rubric, levels, injection=prepared.injection)
        return ScoreResult(
            question_id=prepared.request.question_id,
            score=verdict.score,
            feedback=feedback_for(self._rubric, verdict, injection=prepared.injection),
            criteria=verdict.criteria,
            flags=prepared.flags,
        )

    async def _grade_chunk(self, chunk: Sequence[_Prepared]) -> list[dict[str, float]]:
        """The model's levels for each answer of one call, in order, retrying failed calls."""
        # Opaque per-call ids: the model never sees question ids, and a reply cannot name another call's.
        ids = [f"a{n}" for n in range(1, len(chunk) + 1)]
        items = [msgspec.structs.replace(p.item, id=i) for i, p in zip(ids, chunk, strict=True)]
        system, user = render_prompts(self._rubric, items)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._config.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    levels = await self._attempt(system, user, ids)
        except CallFailedError as exc:
            attempts = f" after {self._config.max_retries + 1} attempts" if exc.retryable else ""
            raise ScorerUnavailableError(f"llm.rubric: {exc.reason}{attempts}") from exc
        return [levels[i] for i in ids]

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, at least the server's ``Retry-After``, at most the cap."""
        delay = self._backoff(state)
        failure = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failure, CallFailedError) and failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        return min(delay, self._config.max_backoff_seconds)

    async def _attempt(self, system: str, user: str, ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """One call under the concurrency limit and the breaker."""
        client, semaphore = self._open()
        async with semaphore:
            # Asked after waiting for a slot: the circuit may have opened meanwhile.
            if not self._breaker.try_acquire():
                raise ScorerUnavailableError(
                    f"llm.rubric: circuit {self._breaker.state.value} "
                    f"({self._breaker.retry_after():.1f}s until the next probe)"
                )
            try:
                content = await client.complete(system, user)
                levels = parse_reply(self._rubric, content, ids)
            except ReplyError as exc:
                self._record_failure(str(exc))
                raise CallFailedError(f"malformed reply: {exc}", retryable=True) from None
            except CallFailedError as exc:
                self._record_failure(exc.reason)
                raise
            except BaseException:
                # Cancelled (e.g. the service's timeout) or a bug: no verdict on the endpoint.
                self._breaker.release()
                raise
            self._record_success()
            return levels

    def _record_failure(self, reason: str) -> None:
        before = self._breaker.state
        self._breaker.record_failure()
        log.warning("llm rubric call failed", reason=reason, circuit=self._breaker.state.value)
        if before is not CircuitState.OPEN and self._breaker.state is CircuitState.OPEN:
            log.error("llm rubric circuit opened", reset_seconds=self._breaker.reset_seconds)

    def _record_success(self) -> None:
        if self._breaker.state is not CircuitState.CLOSED:
            log.info("llm rubric circuit closed")
        self._breaker.record_success()
