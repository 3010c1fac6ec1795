"""The chaos benchmark's accounting (``bench/chaos_report.py``): how answers are classified and what counts as
acknowledged, recorded, unlocked, lost and duplicated."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from bench.chaos_report import (
    AckedSubmit,
    AttemptRow,
    Classified,
    Ledger,
    Snapshot,
    Totals,
    classify_graphql_http,
    classify_graphql_payload,
    classify_rest,
    classify_ws_close,
    compute_totals,
    nearest_rank,
)

PROBLEM = "application/problem+json"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _problem(status: int, code: str) -> bytes:
    return json.dumps({"type": "urn:x", "title": "t", "status": status, "detail": "d", "code": code}).encode()


def test_rest_answers_are_ok_typed_or_untyped() -> None:
    assert classify_rest(201, "application/json", b'{"attemptId": "a"}') == Classified("ok", data={"attemptId": "a"})
    unavailable = classify_rest(503, PROBLEM, _problem(503, "UNAVAILABLE"))
    assert (unavailable.outcome, unavailable.code) == ("typed", "UNAVAILABLE")
    assert classify_rest(500, PROBLEM, _problem(500, "INTERNAL_SERVER_ERROR")).outcome == "untyped"
    assert classify_rest(500, "text/plain", b"Internal Server Error").outcome == "untyped"
    # A 503 with a code but not as problem+json is not the contract either.
    assert classify_rest(503, "application/json", _problem(503, "UNAVAILABLE")).outcome == "untyped"
    assert classify_rest(400, "text/plain", b"bad").outcome == "untyped_4xx"


def test_graphql_errors_need_an_extensions_code_other_than_internal() -> None:
    ok = classify_graphql_payload({"data": {"submitConnectionKey": {"passed": True}}}, "submitConnectionKey")
    assert ok == Classified("ok", data={"passed": True})
    typed = classify_graphql_payload(
        {"data": None, "errors": [{"message": "busy", "extensions": {"code": "RATE_LIMITED"}}]}, "x"
    )
    assert (typed.outcome, typed.code) == ("typed", "RATE_LIMITED")
    assert classify_graphql_payload({"errors": [{"message": "boom"}]}, "x").outcome == "untyped"
    internal = {"errors": [{"message": "boom", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]}
    assert classify_graphql_payload(internal, "x").outcome == "untyped"
    assert classify_graphql_payload({"data": {"other": {}}}, "x").outcome == "untyped"


def test_graphql_over_http_falls_back_to_problem_json_before_the_graphql_layer() -> None:
    body = json.dumps({"data": {"createConnectionKey": {"id": "k"}}}).encode()
    assert classify_graphql_http(200, "application/json", body, "createConnectionKey").outcome == "ok"
    admission = classify_graphql_http(503, PROBLEM, _problem(503, "UNAVAILABLE"), "createConnectionKey")
    assert (admission.outcome, admission.code) == ("typed", "UNAVAILABLE")
    assert classify_graphql_http(502, "text/html", b"<html>", "createConnectionKey").outcome == "untyped"
    assert classify_graphql_http(200, "text/plain", b"hello", "createConnectionKey").outcome == "untyped"


def test_only_server_failure_close_codes_are_untyped() -> None:
    assert classify_ws_close(4500).outcome == "untyped"  # type: ignore[union-attr]
    assert classify_ws_close(1011).outcome == "untyped"  # type: ignore[union-attr]
    for code in (1000, 1001, 4400, 4408, None):
        assert classify_ws_close(code) is None


def test_nearest_rank_percentile() -> None:
    assert nearest_rank([0.3, 0.1, 0.2, 0.4], 50) == 0.2
    assert nearest_rank([float(n) for n in range(1, 101)], 95) == 95.0
    assert math.isnan(nearest_rank([], 95))


def _attempt(key: str, passed: bool = True, errors: tuple[str, ...] = ()) -> AttemptRow:
    return AttemptRow(f"attempt-{key}", key, f"conv-{key}", passed, NOW, errors)


def test_a_clean_run_has_nothing_lost_and_counts_each_part() -> None:
    ledger = Ledger()
    ledger.acked_creates.update({"k1": "conv-k1", "k2": "conv-k2", "k3": "conv-k3"})
    ledger.acked_submits["k1"] = AckedSubmit("k1", "attempt-k1", "conv-k1", True)
    ledger.acked_submits["k2"] = AckedSubmit("k2", "attempt-k2", "conv-k2", False)
    ledger.acked_profiles["u1"] = "chaos-abc"
    ledger.accepted_submit_seconds += [0.05, 0.1]
    snapshot = Snapshot(
        key_ids={"k1", "k2", "k3"},
        attempts=[_attempt("k1"), _attempt("k2", passed=False)],
        conversation_states={"conv-k1": "UNLOCKED", "conv-k2": "COOLDOWN", "conv-k3": "LOCKED"},
        profile_bios={"u1": "Chaos profile write chaos-abc."},
    )
    totals = compute_totals(ledger, snapshot)
    assert (totals.acknowledged, totals.recorded, totals.unlocked) == (5, 5, 1)
    assert (totals.lost, totals.duplicates, totals.untyped_5xx) == (0, 0, 0)
    assert not totals.failed
    assert totals.line() == (
        "chaos: acknowledged 5, recorded 5, unlocked 1, lost 0, duplicates 0, untyped_5xx 0, accepted_p95_ms 100"
    )


def test_lost_counts_unrecorded_acknowledgements_missing_unlocks_and_profile_writes() -> None:
    ledger = Ledger()
    ledger.acked_creates.update({"k1": "conv-k1", "gone": "conv-gone"})
    ledger.acked_submits["k1"] = AckedSubmit("k1", "attempt-k1", "conv-k1", True)
    ledger.acked_submits["k9"] = AckedSubmit("k9", "attempt-k9", "conv-k9", True)  # no attempt row
    ledger.acked_profiles.update({"u1": "chaos-1", "u2": "chaos-2"})
    snapshot = Snapshot(
        key_ids={"k1", "k9", "k7"},
        # k1 acknowledged, passed, still LOCKED; k7's client never heard the answer, passed, LOCKED too.
        attempts=[_attempt("k1"), _attempt("k7")],
        conversation_states={"conv-k1": "LOCKED", "conv-k7": "LOCKED"},
        profile_bios={"u1": "an older bio", "u2": None},
    )
    totals = compute_totals(ledger, snapshot)
    assert totals.acknowledged == 4
    assert totals.recorded == 2  # k1's create and submit; "gone" has no key row, k9 no attempt
    assert totals.lost_not_recorded == 2
    assert (totals.lost_not_unlocked, totals.lost_not_unlocked_unacknowledged) == (2, 1)
    assert totals.lost_profiles == 2
    assert totals.lost == 6
    assert totals.unlocked == 0
    assert totals.failed
    assert "lost 6" in totals.line()


def test_duplicates_count_attempts_per_key_and_events_applied_twice() -> None:
    snapshot = Snapshot(
        key_ids={"k1"},
        attempts=[_attempt("k1"), AttemptRow("attempt-b", "k1", "conv-k1", True, NOW)],
        conversation_states={"conv-k1": "UNLOCKED"},
    )
    snapshot.processed_event_counts.update({("unlock-orchestrator", "e1"): 2, ("push-notifications", "e1"): 1})
    snapshot.completed_events_per_attempt.update({"attempt-k1": 3})
    snapshot.unlocked_events_per_conversation.update({"conv-k1": 2})
    totals = compute_totals(Ledger(), snapshot)
    assert (totals.duplicate_attempts, totals.duplicate_processed) == (1, 1)
    assert (totals.duplicate_completed, totals.duplicate_unlocked) == (2, 1)
    assert totals.duplicates == 5
    assert totals.failed


def test_untyped_answers_and_scorer_failures_make_the_run_fail() -> None:
    ledger = Ledger()
    ledger.record("rest-create", Classified("untyped", None, "HTTP 500"))
    ledger.record("rest-submit", Classified("typed", "UNAVAILABLE", "busy"))
    ledger.record("gql-submit", Classified("typed", "UNAVAILABLE", "busy"))
    ledger.record("rest-profile", Classified("untyped_4xx", None, "HTTP 400"))
    assert (ledger.untyped, ledger.untyped_4xx, ledger.typed_total("UNAVAILABLE")) == (1, 1, 2)
    assert ledger.untyped_samples == ["rest-create: HTTP 500"]
    assert compute_totals(ledger, Snapshot()).untyped_5xx == 1

    outage = [(NOW - timedelta(seconds=1), NOW + timedelta(seconds=1))]
    late = AttemptRow("a2", "k2", "c2", False, NOW + timedelta(minutes=5), ("scorer_timeout",))
    snapshot = Snapshot(attempts=[_attempt("k1", passed=False, errors=("scorer_unavailable",)), late])
    totals = compute_totals(Ledger(), snapshot, outage)
    assert (totals.scorer_failures_recorded, totals.scorer_failures_in_outage) == (2, 1)
    assert totals.failed and totals.lost == 0


def test_totals_of_two_backends_add_up() -> None:
    one = Totals(acknowledged=3, recorded=3, unlocked=1, accepted_submit_seconds=[0.2])
    two = Totals(acknowledged=2, recorded=1, lost_not_recorded=1, untyped_5xx=4, accepted_submit_seconds=[0.4])
    both = one + two
    assert (both.acknowledged, both.recorded, both.unlocked, both.lost, both.untyped_5xx) == (5, 4, 1, 1, 4)
    assert both.accepted_p95_ms == 400.0
