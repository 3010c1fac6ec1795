"""Create and submit keep their invariants under races, forged payloads, scorer outages and retries, on
SQLite and PostgreSQL: one open key per pair (a partial unique index), the retry policy checked where the
attempt is recorded, closed keys refused before any scorer runs, signed claims equal to the key row, our
outage never recorded as the user's failure, and an identical resubmission answered with its result."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

import app.services.container as container
from app.db.key_store import AttemptRow, KeyStatus, seal_attempt
from app.db.tables import ConnectionKey, ConnectionKeyAttempt
from app.domain.signing import PayloadSigner
from app.settings import Settings
from plugins.hookspecs import hookimpl
from plugins.scorer import Scorer, ScoreRequest, ScoreResult
from tests.conftest import make_settings
from tests.integration.conftest import Api

Start = Callable[[Settings], Awaitable[Api]]
TYPED_CREATE = {"CONFLICT", "UNAVAILABLE", "RATE_LIMITED"}


class ToggleScorer:
    """A throwaway scorer plugin's scorer: counts its calls; ``mode`` "raise" makes it fail at run time,
    ``gate`` holds every call until set; a response containing "poison" gets a NaN criterion."""

    version = "0.1.0"
    deterministic = True

    def __init__(self, name: str, kinds: Sequence[str]) -> None:
        self.name = name
        self.kinds = frozenset(kinds)
        self.mode = "ok"
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def score(self, batch: Sequence[ScoreRequest]) -> list[ScoreResult]:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.mode == "raise":
            raise RuntimeError("the scoring backend fell over")
        return [
            ScoreResult(
                r.question_id,
                0.0 if "cannot remember" in r.response else 1.0,
                criteria={"specific": float("nan")} if "poison" in r.response else None,
            )
            for r in batch
        ]


class ThrowawayPlugin:
    def __init__(self, *scorers: ToggleScorer) -> None:
        self.scorers = scorers

    @hookimpl
    def register_scorers(self, register: Callable[[Scorer], None]) -> None:
        for scorer in self.scorers:
            register(scorer)


@pytest.fixture
def toggles(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ToggleScorer]]:
    """Registers ``toggle.comprehension`` and ``toggle.fallback`` beside the installed plugins of every app
    the test starts (the service builds its plugin manager at start-up)."""
    scorers = {
        "toggle.comprehension": ToggleScorer("toggle.comprehension", ["COMPREHENSION"]),
        "toggle.fallback": ToggleScorer("toggle.fallback", ["COMPREHENSION"]),
    }
    build = container.build_plugin_manager

    def with_toggles(*args: Any, **kwargs: Any) -> Any:
        pm = build(*args, **kwargs)
        pm.register(ThrowawayPlugin(*scorers.values()), name="throwaway-toggles")
        return pm

    monkeypatch.setattr(container, "build_plugin_manager", with_toggles)
    yield scorers


def _settings(database_url: str, fallback: str | None = None, **sections: dict[str, Any]) -> Settings:
    """Cheap scorers (no model): comprehension goes to the throwaway toggle, with ``fallback`` if given."""
    scoring = {
        "routes": {
            "COMPREHENSION": "toggle.comprehension",
            "CONSENT": "rule.choice",
            "FREE_RESPONSE": "rule.free_response",
        },
        "fallbacks": {"COMPREHENSION": fallback} if fallback else {},
    }
    return make_settings(database_url, rate_limit={"enabled": False}, scoring=scoring, **sections)


async def _pair(api: Api) -> tuple[uuid.UUID, uuid.UUID]:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    return alice, bob


def _code(result: dict[str, Any]) -> str | None:
    return result["errors"][0]["extensions"]["code"] if "errors" in result else None


async def _create(api: Api, requester: uuid.UUID, target: uuid.UUID) -> dict[str, Any]:
    return await api.gql(
        """mutation($t: ID!) { createConnectionKey(targetUserId: $t) {
             id conversationId signedPayload questions { id kind prompt choices } } }""",
        requester,
        t=str(target),
    )


async def _attempts(key_id: str | uuid.UUID | None = None) -> int:
    query = ConnectionKeyAttempt.count()
    if key_id is not None:
        query = query.where(ConnectionKeyAttempt.connection_key_id == uuid.UUID(str(key_id)))
    return await query.run()


async def _status(key_id: str) -> str:
    row = await ConnectionKey.select(ConnectionKey.status).where(ConnectionKey.id == uuid.UUID(key_id)).first().run()
    return row["status"]


def _resign(api: Api, payload: str, **changes: Any) -> str:
    """Re-sign ``payload`` with a known signing key after changing its claims: what someone holding a
    leaked (not yet retired) key could do."""
    signing = api.settings.signing
    signer = PayloadSigner(signing.keys, signing.active_key_id, signing.ttl_seconds)
    claims = signer.verify(payload, datetime.now(UTC))
    return signer.sign(msgspec.structs.replace(claims, **changes))


# ------------------------------------------------------------------------------------ one open key


@pytest.mark.asyncio
async def test_concurrent_creates_for_one_pair_leave_exactly_one_open_key(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer]
) -> None:
    api = await api_factory(_settings(database_url))
    alice, bob = await _pair(api)
    results = await asyncio.gather(*(_create(api, alice, bob) for _ in range(10)))
    codes = [_code(r) for r in results]
    assert set(codes) - {None} <= TYPED_CREATE, codes  # a loser is typed, never a 500
    assert codes.count(None) >= 1
    issued = await ConnectionKey.count().where(
        (ConnectionKey.requester_id == alice) & (ConnectionKey.status == KeyStatus.ISSUED)
    )
    assert issued == 1
    # The open one is the newest issued: every other key that was issued is superseded.
    keys = await ConnectionKey.select(ConnectionKey.status).where(ConnectionKey.requester_id == alice)
    assert sorted(k["status"] for k in keys) == ["ISSUED"] + ["SUPERSEDED"] * (len(keys) - 1)


@pytest.mark.asyncio
async def test_the_database_refuses_a_second_open_key_for_a_pair(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer]
) -> None:
    api = await api_factory(_settings(database_url))
    alice, bob = await _pair(api)
    payload = (await _create(api, alice, bob))["data"]["createConnectionKey"]
    row = await ConnectionKey.select().where(ConnectionKey.id == uuid.UUID(payload["id"])).first().run()
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await ConnectionKey.insert(ConnectionKey(**{**row, "id": uuid.uuid4()})).run()


# ------------------------------------------------------------------------------------ retry policy


async def _racing_failure(api: Api, payload: dict[str, Any], requester: uuid.UUID, target: uuid.UUID) -> None:
    """Record a failed attempt of the pair now, after ``payload``'s quiz was issued: what a submission of
    the pair's previous quiz that raced the create would leave."""
    now = datetime.now(UTC)
    keyring = await api.services.encryption.keyring([requester, target], create=True)
    racing = AttemptRow(
        id=uuid.uuid4(),
        connection_key_id=uuid.uuid4(),
        conversation_id=uuid.UUID(payload["conversationId"]),
        requester_id=requester,
        target_id=target,
        responses="[]",
        total_elapsed_ms=None,
        score=0.0,
        passed=False,
        breakdown="[]",
        shadow_breakdown="[]",
        experiments="{}",
        feedback="[]",
        unlock_state="RETRY_AVAILABLE",
        retry_available_at=None,
        started_at=now,
        submitted_at=now,
    )
    await api.services.key_store.insert_attempts([seal_attempt(keyring, racing)])


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("retry", "wait"),
    [
        ({"cooldown_seconds": 600, "max_attempts_per_day": 5}, 600),  # the cooldown after the racing failure
        ({"cooldown_seconds": 0, "max_attempts_per_day": 1}, 86_400),  # the day's only attempt is spent
    ],
)
async def test_the_policy_is_checked_where_the_attempt_is_recorded(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer], retry: dict[str, int], wait: int
) -> None:
    """A failure committed after the create's check (a racing submission of the pair's previous quiz) is
    seen by the writer: the new quiz's attempt is refused RATE_LIMITED with the true wait, nothing is
    recorded, and the key stays open."""
    api = await api_factory(_settings(database_url, retry=retry))
    alice, bob = await _pair(api)
    payload = (await _create(api, alice, bob))["data"]["createConnectionKey"]
    await _racing_failure(api, payload, alice, bob)

    answers = await api.answers(payload)
    refused = await api.submit(alice, payload["signedPayload"], answers)
    assert _code(refused) == "RATE_LIMITED", refused
    assert wait - 10 <= refused["errors"][0]["extensions"]["retryAfter"] <= wait
    assert await _attempts(payload["id"]) == 0
    assert await _status(payload["id"]) == KeyStatus.ISSUED


@pytest.mark.asyncio
async def test_a_quiz_the_policy_refuses_for_good_is_closed_and_a_new_one_may_start(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer]
) -> None:
    """Refused at its issue time, the quiz can never be recorded; once the cooldown is over a Retry-After
    would come round forever (retryAfter 1 on every try). The writer closes the key instead and answers
    CONFLICT: start a new quiz, which is then recorded."""
    api = await api_factory(_settings(database_url, retry={"cooldown_seconds": 1, "max_attempts_per_day": 5}))
    alice, bob = await _pair(api)
    payload = (await _create(api, alice, bob))["data"]["createConnectionKey"]
    await _racing_failure(api, payload, alice, bob)
    answers = await api.answers(payload)
    await asyncio.sleep(1.5)  # the cooldown after the racing failure is over

    for _ in range(2):  # the answer is final: the same again, never "retry in 1 s"
        refused = await api.submit(alice, payload["signedPayload"], answers)
        assert _code(refused) == "CONFLICT", refused
    assert await _attempts(payload["id"]) == 0
    assert await _status(payload["id"]) == KeyStatus.SUPERSEDED

    fresh = (await _create(api, alice, bob))["data"]["createConnectionKey"]
    recorded = await api.submit(alice, fresh["signedPayload"], await api.answers(fresh))
    assert recorded["data"]["submitConnectionKey"]["passed"] is True, recorded
    assert await _attempts(fresh["id"]) == 1


@pytest.mark.asyncio
async def test_parallel_creates_and_submits_stay_within_the_policy(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer]
) -> None:
    api = await api_factory(_settings(database_url, retry={"cooldown_seconds": 600, "max_attempts_per_day": 3}))
    alice, bob = await _pair(api)

    async def create_and_fail() -> list[str | None]:
        created = await _create(api, alice, bob)
        if "errors" in created:
            return [_code(created)]
        payload = created["data"]["createConnectionKey"]
        result = await api.submit(alice, payload["signedPayload"], await api.answers(payload, correct=False))
        return [None, _code(result)]

    outcomes = [code for codes in await asyncio.gather(*(create_and_fail() for _ in range(8))) for code in codes]
    assert set(outcomes) - {None} <= TYPED_CREATE | {"PAYLOAD_REPLAYED", "NOT_FOUND"}, outcomes
    # A 600 s cooldown after the first failure: however the creates and submits interleave, one attempt.
    assert await _attempts() == 1


# ------------------------------------------------------------------------------------ closed keys


@pytest.mark.asyncio
async def test_closed_or_unknown_keys_never_reach_a_scorer(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer]
) -> None:
    api = await api_factory(_settings(database_url))
    alice, bob = await _pair(api)
    old = (await _create(api, alice, bob))["data"]["createConnectionKey"]
    answers = await api.answers(old)
    await _create(api, alice, bob)  # supersedes the first
    counting = toggles["toggle.comprehension"]

    superseded = await api.submit(alice, old["signedPayload"], answers)
    assert _code(superseded) == "CONFLICT"
    unknown = await api.submit(alice, _resign(api, old["signedPayload"], key_id=uuid.uuid4()), answers)
    assert _code(unknown) == "PAYLOAD_INVALID"
    assert counting.calls == 0
    assert await _attempts() == 0


# ------------------------------------------------------------------------------------ re-signed claims


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "claim", ["requester_id", "target_id", "conversation_id", "expires_at", "question_ids", "question_order"]
)
async def test_re_signed_claims_that_differ_from_the_key_row_are_refused(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer], claim: str
) -> None:
    api = await api_factory(_settings(database_url))
    alice, bob = await _pair(api)
    mallory = uuid.uuid4()
    await api.upsert_profile(mallory, "Mallory")
    payload = (await _create(api, alice, bob))["data"]["createConnectionKey"]
    answers = await api.answers(payload)
    signing = api.settings.signing
    claims = PayloadSigner(signing.keys, signing.active_key_id, signing.ttl_seconds).verify(
        payload["signedPayload"], datetime.now(UTC)
    )
    change: dict[str, Any] = {
        "requester_id": {"requester_id": mallory},
        "target_id": {"target_id": mallory},
        "conversation_id": {"conversation_id": uuid.uuid4()},
        "expires_at": {"expires_at": claims.expires_at + 3600},
        "question_ids": {"question_ids": [*claims.question_ids[:-1], uuid.uuid4()]},
        "question_order": {"question_ids": list(reversed(claims.question_ids))},
    }[claim]
    caller = mallory if claim == "requester_id" else alice
    forged = await api.submit(caller, _resign(api, payload["signedPayload"], **change), answers)
    assert _code(forged) == "PAYLOAD_INVALID", forged
    assert toggles["toggle.comprehension"].calls == 0
    assert await _attempts() == 0
    # The genuine payload still works.
    genuine = await api.submit(alice, payload["signedPayload"], answers)
    assert genuine["data"]["submitConnectionKey"]["passed"] is True


# ------------------------------------------------------------------------------------ our outage


@pytest.mark.asyncio
@pytest.mark.parametrize("fallback", [None, "toggle.fallback"])
async def test_a_scorer_outage_records_nothing_and_the_same_payload_is_accepted_after(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer], fallback: str | None
) -> None:
    """Without a fallback, or with a fallback that fails too: UNAVAILABLE with Retry-After, nothing
    recorded, the claim released; after recovery the same payload and answers are accepted and no
    RATE_LIMITED follows."""
    api = await api_factory(_settings(database_url, fallback, retry={"cooldown_seconds": 600}))
    alice, bob = await _pair(api)
    payload = (await _create(api, alice, bob))["data"]["createConnectionKey"]
    answers = await api.answers(payload)
    for scorer in toggles.values():
        scorer.mode = "raise"

    down = await api.submit(alice, payload["signedPayload"], answers)
    assert _code(down) == "UNAVAILABLE", down
    assert down["errors"][0]["extensions"]["retryAfter"] == api.settings.scoring.outage_retry_after_seconds
    assert await _attempts() == 0
    assert await _status(payload["id"]) == KeyStatus.ISSUED
    again = await api.submit(alice, payload["signedPayload"], answers)
    assert _code(again) == "UNAVAILABLE"  # the claim was released: not PAYLOAD_REPLAYED

    for scorer in toggles.values():
        scorer.mode = "ok"
    recovered = await api.submit(alice, payload["signedPayload"], answers)
    assert "errors" not in recovered, recovered
    assert recovered["data"]["submitConnectionKey"]["passed"] is True
    assert await _attempts() == 1


@pytest.mark.asyncio
async def test_a_failed_comprehension_scorer_falls_back_to_lexical_overlap_and_says_so(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer]
) -> None:
    api = await api_factory(_settings(database_url, "rule.overlap"))
    alice, bob = await _pair(api)
    payload = (await _create(api, alice, bob))["data"]["createConnectionKey"]
    toggles["toggle.comprehension"].mode = "raise"
    result = await api.gql(
        """mutation($input: ConnectionKeyResponseInput!) { submitConnectionKey(input: $input) {
             passed breakdown { questionId kind scorer fallbackFrom score } } }""",
        alice,
        input={"signedPayload": payload["signedPayload"], "answers": await api.answers(payload)},
    )
    assert "errors" not in result, result
    outcome = result["data"]["submitConnectionKey"]
    comprehension = [b for b in outcome["breakdown"] if b["kind"] == "COMPREHENSION"]
    assert comprehension and all(
        (b["scorer"], b["fallbackFrom"]) == ("rule.overlap", "toggle.comprehension") for b in comprehension
    )
    assert all(b["score"] >= 0.5 for b in comprehension)  # paraphrases share enough of the person's words
    stored = msgspec.json.decode((await ConnectionKeyAttempt.select().first().run())["breakdown"])
    lines = [b for b in stored if b["kind"] == "COMPREHENSION"]
    assert all(
        (b["scorer"], b["fallback_from"], b["fallback_reason"])
        == ("rule.overlap", "toggle.comprehension", "scorer_error")
        for b in lines
    )


# ------------------------------------------------------------------------------------ idempotent submit

RESULT_FIELDS = (
    "attemptId score passed unlockState retryAvailableAt feedback breakdown { questionId kind scorer score passed }"
)


@pytest.mark.asyncio
async def test_an_identical_resubmission_gets_the_recorded_result(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer]
) -> None:
    api = await api_factory(_settings(database_url))
    alice, bob = await _pair(api)
    payload = (await _create(api, alice, bob))["data"]["createConnectionKey"]
    answers = await api.answers(payload, correct=False)
    first = await api.submit(alice, payload["signedPayload"], answers)
    assert "errors" not in first, first
    calls = toggles["toggle.comprehension"].calls

    again = await api.submit(alice, payload["signedPayload"], list(reversed(answers)))  # order is not meaning
    assert again == first
    assert toggles["toggle.comprehension"].calls == calls  # not scored again
    assert await _attempts() == 1
    stored = await ConnectionKeyAttempt.select(ConnectionKeyAttempt.request_digest).first().run()
    assert len(stored["request_digest"]) == 64 and answers[0]["value"] not in stored["request_digest"]

    other = [{**answers[0], "value": answers[0]["value"] + "!"}, *answers[1:]]
    assert _code(await api.submit(alice, payload["signedPayload"], other)) == "PAYLOAD_REPLAYED"
    # Another caller allowed to submit for the requester (a moderator) with the same body: not a retry.
    moderator = api.headers(uuid.uuid4(), extra_claims={"app_metadata": {"roles": ["moderator"]}})
    response = await api.client.post(
        f"/connection-keys/{payload['id']}/responses",
        json={"signedPayload": payload["signedPayload"], "answers": answers},
        headers=moderator,
    )
    assert response.status_code == 409 and response.json()["code"] == "PAYLOAD_REPLAYED", response.text
    assert await _attempts() == 1


@pytest.mark.asyncio
async def test_a_resubmission_while_the_first_is_scored_is_unavailable_briefly(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer]
) -> None:
    api = await api_factory(_settings(database_url))
    alice, bob = await _pair(api)
    payload = (await _create(api, alice, bob))["data"]["createConnectionKey"]
    answers = await api.answers(payload)
    gate = toggles["toggle.comprehension"].gate = asyncio.Event()
    first = asyncio.create_task(api.submit(alice, payload["signedPayload"], answers))
    await asyncio.wait_for(toggles["toggle.comprehension"].entered.wait(), 10)

    same = await api.submit(alice, payload["signedPayload"], answers)
    assert _code(same) == "UNAVAILABLE" and same["errors"][0]["extensions"]["retryAfter"] == 1
    different = await api.submit(alice, payload["signedPayload"], await api.answers(payload, correct=False))
    assert _code(different) == "PAYLOAD_REPLAYED"

    gate.set()
    recorded = await first
    assert "errors" not in recorded, recorded
    assert await api.submit(alice, payload["signedPayload"], answers) == recorded


# ------------------------------------------------------------------------------------ bad plugin values


@pytest.mark.asyncio
async def test_a_bad_plugin_value_fails_only_its_own_submission(
    api_factory: Start, database_url: str, toggles: dict[str, ToggleScorer]
) -> None:
    api = await api_factory(_settings(database_url))
    jobs, poisoned = [], None
    for index in range(6):
        alice, bob = await _pair(api)
        payload = (await _create(api, alice, bob))["data"]["createConnectionKey"]
        answers = await api.answers(payload)
        if index == 3:
            first = next(a for a, q in zip(answers, payload["questions"], strict=True) if q["kind"] == "COMPREHENSION")
            first["value"] += " poison"
            poisoned = payload["id"]
        jobs.append(api.submit(alice, payload["signedPayload"], answers))
    results = await asyncio.gather(*jobs)
    codes = [_code(r) for r in results]
    assert codes == [None, None, None, "UNAVAILABLE", None, None], results
    assert await _attempts() == 5 and await _attempts(poisoned) == 0
    assert await _status(str(poisoned)) == KeyStatus.ISSUED
