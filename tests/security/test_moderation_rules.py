"""Pure moderation logic: override decisions, reason checks, page cursors and the roles claim path."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.auth import Principal, require_moderator, roles_at
from app.domain.moderation_rules import (
    DecisionRefused,
    OverrideDecision,
    PageCursor,
    clean_reason,
    decide_override,
    decode_cursor,
    encode_cursor,
)
from app.domain.quiz import UnlockState
from app.domain.unlock_rules import RetryPolicy
from app.errors import ErrorCode, ServiceError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(cooldown_seconds=600, max_attempts_per_day=3)


def decide(decision: OverrideDecision, current: UnlockState, **kwargs: object):  # type: ignore[no-untyped-def]
    args = {"attempt_passed": False, "already_excused": False, "other_failures": [], "now": NOW, "policy": POLICY}
    args.update(kwargs)
    return decide_override(decision, current, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "current", [UnlockState.LOCKED, UnlockState.RETRY_AVAILABLE, UnlockState.COOLDOWN, UnlockState.PENDING]
)
def test_unlock_unlocks_anything_not_yet_unlocked(current: UnlockState) -> None:
    outcome = decide(OverrideDecision.UNLOCK, current)
    assert (outcome.state, outcome.changed, outcome.retry_available_at) == (UnlockState.UNLOCKED, True, None)


def test_unlock_of_an_unlocked_conversation_changes_nothing() -> None:
    assert decide(OverrideDecision.UNLOCK, UnlockState.UNLOCKED).changed is False


def test_lock_revokes_an_unlock_and_only_an_unlock() -> None:
    outcome = decide(OverrideDecision.LOCK, UnlockState.UNLOCKED, attempt_passed=True)
    assert (outcome.state, outcome.changed) == (UnlockState.LOCKED, True)
    for current in (UnlockState.LOCKED, UnlockState.RETRY_AVAILABLE, UnlockState.COOLDOWN):
        unchanged = decide(OverrideDecision.LOCK, current)
        assert (unchanged.state, unchanged.changed) == (current, False)


def test_allow_retry_opens_a_retry_now_when_no_other_failure_holds_it() -> None:
    outcome = decide(OverrideDecision.ALLOW_RETRY, UnlockState.COOLDOWN)
    assert (outcome.state, outcome.retry_available_at, outcome.changed) == (UnlockState.RETRY_AVAILABLE, NOW, True)


def test_allow_retry_respects_the_other_failures_that_still_count() -> None:
    recent = NOW - timedelta(seconds=60)  # another failure a minute ago: its cooldown still runs
    outcome = decide(OverrideDecision.ALLOW_RETRY, UnlockState.COOLDOWN, other_failures=[recent])
    assert outcome.state is UnlockState.RETRY_AVAILABLE
    assert outcome.retry_available_at == recent + timedelta(seconds=600)
    # Three other failures in the day keep the daily limit reached even without this one.
    full = [NOW - timedelta(hours=h) for h in (1, 2, 3)]
    outcome = decide(OverrideDecision.ALLOW_RETRY, UnlockState.COOLDOWN, other_failures=full)
    assert outcome.state is UnlockState.COOLDOWN and outcome.retry_available_at > NOW
    # Failures older than the window no longer count.
    old = [NOW - timedelta(days=2)] * 5
    assert decide(OverrideDecision.ALLOW_RETRY, UnlockState.COOLDOWN, other_failures=old).retry_available_at == NOW


def test_allow_retry_is_refused_where_it_makes_no_sense() -> None:
    with pytest.raises(DecisionRefused):
        decide(OverrideDecision.ALLOW_RETRY, UnlockState.LOCKED, attempt_passed=True)
    with pytest.raises(DecisionRefused):
        decide(OverrideDecision.ALLOW_RETRY, UnlockState.UNLOCKED)
    assert decide(OverrideDecision.ALLOW_RETRY, UnlockState.RETRY_AVAILABLE, already_excused=True).changed is False


def test_reason_is_trimmed_bounded_and_free_of_control_characters() -> None:
    assert clean_reason("  scorer missed a paraphrase \n", 100) == "scorer missed a paraphrase"
    assert clean_reason("line one\nline two\ttab", 100) == "line one\nline two\ttab"
    for bad in ("", "   \n", "x" * 101, "nul\x00byte", "bidi\u202eoverride", "escape\x1b[31m"):
        with pytest.raises(ValueError) as caught:
            clean_reason(bad, 100)
        assert bad.strip() == "" or bad not in str(caught.value)  # the message never quotes the reason


def test_cursor_round_trips_and_rejects_anything_else() -> None:
    cursor = PageCursor(datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC), uuid.uuid4())
    token = encode_cursor(cursor)
    assert decode_cursor(token) == cursor
    assert "=" not in token and "/" not in token and "+" not in token
    naive = encode_cursor(PageCursor(datetime(2026, 1, 1), uuid.uuid4()))  # a naive time: the point of the test
    for bad in ("", "!!!", "e30", "W10", token[:-3], "A" * 500, naive, "WyIyMDI2IiwieCJd"):
        with pytest.raises(ValueError):
            decode_cursor(bad)


@pytest.mark.parametrize(
    "when",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),  # before year 1 in UTC: OverflowError
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),  # past year 9999 in UTC
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),  # representable, but out of the accepted range
        datetime(2000, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),  # 1999 once in UTC
    ],
)
def test_cursor_with_an_out_of_range_time_is_invalid_not_a_crash(when: datetime) -> None:
    with pytest.raises(ValueError, match="cursor is not valid"):
        decode_cursor(encode_cursor(PageCursor(when, uuid.uuid4())))


def test_cursor_times_are_normalised_to_utc_within_the_range() -> None:
    ident = uuid.uuid4()
    earliest = decode_cursor(
        encode_cursor(PageCursor(datetime(2000, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), ident))
    )
    assert earliest == PageCursor(datetime(2000, 1, 1, tzinfo=UTC), ident) and earliest.submitted_at.tzinfo is UTC
    latest = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert decode_cursor(encode_cursor(PageCursor(latest, ident))).submitted_at == latest


@pytest.mark.parametrize(
    ("claims", "path", "expected"),
    [
        ({"app_metadata": {"roles": ["moderator", "x"]}}, "app_metadata.roles", {"moderator", "x"}),
        ({"realm_access": {"roles": ["ck-mod", 7, "", None]}}, "realm_access.roles", {"ck-mod"}),
        ({"roles": ["a"]}, "roles", {"a"}),
        ({"app_metadata": {"roles": "moderator"}}, "app_metadata.roles", set()),  # a string is no list
        ({"app_metadata": ["moderator"]}, "app_metadata.roles", set()),
        ({"user_metadata": {"roles": ["moderator"]}}, "app_metadata.roles", set()),
        ({}, "a.b.c", set()),
    ],
)
def test_roles_at_reads_only_a_list_at_the_path(claims: dict, path: str, expected: set[str]) -> None:
    assert roles_at(claims, path) == frozenset(expected)


def test_require_moderator() -> None:
    base = {
        "user_id": uuid.uuid4(),
        "role": "service_role",
        "is_service_role": True,
        "scopes": frozenset({"moderator"}),
        "expires_at": NOW,
    }
    with pytest.raises(ServiceError) as caught:
        require_moderator(Principal(**base))  # service role and a "moderator" scope: still not a moderator
    assert caught.value.code is ErrorCode.FORBIDDEN
    moderator = Principal(**base, roles=frozenset({"moderator"}), is_moderator=True)
    assert require_moderator(moderator) is moderator and moderator.has_role("moderator")
