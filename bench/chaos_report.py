"""The chaos benchmark's accounting: how each answer is classified, and what the end state must show.

Pure: no I/O, no service imports, so ``tests/unit/test_chaos_report.py`` can check the definitions that
``bench/chaos.py`` prints (its module docstring states them in words).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "AckedSubmit",
    "AttemptRow",
    "Classified",
    "Ledger",
    "Snapshot",
    "Totals",
    "classify_graphql_http",
    "classify_graphql_payload",
    "classify_rest",
    "classify_ws_close",
    "compute_totals",
    "nearest_rank",
]

INTERNAL = "INTERNAL_SERVER_ERROR"
# Close codes that mean "the server failed", not "the client was wrong" (4400) or "went away" (1000/1001).
UNTYPED_CLOSE_CODES = frozenset({1011, 4500})
SAMPLES = 12


@dataclass(frozen=True)
class Classified:
    """One answer: ``ok`` (2xx with data), ``typed`` (an error with a code clients can branch on),
    ``untyped`` (a 5xx without a code, an error without ``extensions.code``, ``INTERNAL_SERVER_ERROR``,
    a WebSocket close 1011/4500) or ``untyped_4xx`` (a 4xx without a problem+json code: a gap, not a 500)."""

    outcome: str
    code: str | None = None
    message: str = ""
    data: dict[str, Any] | None = None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _typed(code: Any, message: str) -> Classified:
    if not isinstance(code, str) or not code:
        return Classified("untyped", None, message)
    if code == INTERNAL:
        return Classified("untyped", code, message)
    return Classified("typed", code, message)


def classify_rest(status: int, content_type: str, body: bytes) -> Classified:
    """A REST answer: 2xx is ok; an error must be problem+json with a ``code`` member."""
    doc = _json(body)
    if 200 <= status < 300:
        return Classified("ok", data=doc if isinstance(doc, dict) else None)
    message = f"HTTP {status} {body[:200]!r}"
    if "problem+json" in content_type.lower() and isinstance(doc, dict) and doc.get("code"):
        return _typed(doc.get("code"), f"HTTP {status} {doc.get('code')}: {doc.get('detail', '')}"[:300])
    return Classified("untyped" if status >= 500 else "untyped_4xx", None, message)


def classify_graphql_payload(doc: Any, field_name: str) -> Classified:
    """A GraphQL result (``{"data", "errors"}``): the first error decides; ok needs ``data.<field_name>``."""
    if not isinstance(doc, dict):
        return Classified("untyped", None, f"not a GraphQL result: {str(doc)[:200]}")
    errors = doc.get("errors")
    if errors:
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        code = (first.get("extensions") or {}).get("code")
        message = f"GraphQL {code or 'no extensions.code'}: {str(first.get('message', errors))[:250]}"
        return _typed(code, message)
    data = doc.get("data")
    if isinstance(data, dict) and isinstance(data.get(field_name), dict):
        return Classified("ok", data=data[field_name])
    return Classified("untyped", None, f"GraphQL result without data.{field_name}: {str(doc)[:200]}")


def classify_graphql_http(status: int, content_type: str, body: bytes, field_name: str) -> Classified:
    """GraphQL over HTTP: a JSON result is judged by its errors; anything else like a REST answer (e.g. a
    problem+json 503 from admission control before the GraphQL layer)."""
    doc = _json(body)
    if isinstance(doc, dict) and ("data" in doc or "errors" in doc):
        result = classify_graphql_payload(doc, field_name)
        if result.outcome == "ok" and status != 200:
            return Classified("untyped" if status >= 500 else "untyped_4xx", None, f"HTTP {status} with data")
        return result
    if 200 <= status < 300:
        return Classified("untyped", None, f"HTTP {status} without a GraphQL result: {body[:200]!r}")
    return classify_rest(status, content_type, body)


def classify_ws_close(code: int | None, reason: str = "") -> Classified | None:
    """A close the server sent: ``None`` when it is not a failure of ours (normal, going away, 4400...)."""
    if code in UNTYPED_CLOSE_CODES:
        return Classified("untyped", None, f"WebSocket close {code} {reason}"[:300])
    return None


def nearest_rank(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``nan`` for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass(frozen=True)
class AckedSubmit:
    """A submit that got a 200 result: what the client was told."""

    key_id: str
    attempt_id: str | None
    conversation_id: str
    passed: bool


@dataclass
class Ledger:
    """Everything the clients saw, by operation (``rest-create``, ``ws-submit``...)."""

    outcomes: Counter[str] = field(default_factory=Counter)  # "<op> <outcome>"
    typed: Counter[str] = field(default_factory=Counter)  # "<op> <code>" -> n
    untyped_samples: list[str] = field(default_factory=list)
    untyped_4xx_samples: list[str] = field(default_factory=list)
    transport: Counter[str] = field(default_factory=Counter)  # connection refused/reset, timeouts, cancels
    acked_creates: dict[str, str] = field(default_factory=dict)  # key id -> conversation id
    acked_submits: dict[str, AckedSubmit] = field(default_factory=dict)  # key id -> result
    acked_profiles: dict[str, str] = field(default_factory=dict)  # user id -> marker written in the bio
    accepted_submit_seconds: list[float] = field(default_factory=list)

    def record(self, op: str, result: Classified) -> None:
        """Count one answer (the caller keeps what an ``ok`` acknowledged)."""
        self.outcomes[f"{op} {result.outcome}"] += 1
        if result.outcome == "typed" and result.code:
            self.typed[f"{op} {result.code}"] += 1
        elif result.outcome == "untyped":
            if len(self.untyped_samples) < SAMPLES:
                self.untyped_samples.append(f"{op}: {result.message}")
        elif result.outcome == "untyped_4xx" and len(self.untyped_4xx_samples) < SAMPLES:
            self.untyped_4xx_samples.append(f"{op}: {result.message}")

    def record_transport(self, op: str, what: str) -> None:
        """A request whose answer the client never read (refused, reset, timed out, or cancelled on purpose)."""
        self.transport[f"{op} {what}"] += 1

    def typed_total(self, code: str) -> int:
        """Answers with this code, over every operation."""
        return sum(n for key, n in self.typed.items() if key.rsplit(" ", 1)[-1] == code)

    @property
    def untyped(self) -> int:
        return sum(n for key, n in self.outcomes.items() if key.endswith(" untyped"))

    @property
    def untyped_4xx(self) -> int:
        return sum(n for key, n in self.outcomes.items() if key.endswith(" untyped_4xx"))


@dataclass(frozen=True)
class AttemptRow:
    """One recorded attempt, as the database holds it."""

    attempt_id: str
    key_id: str
    conversation_id: str
    passed: bool
    submitted_at: datetime
    scorer_errors: tuple[str, ...] = ()  # breakdown lines whose ``error`` is ``scorer_*``


@dataclass
class Snapshot:
    """The end state, read from the database after the settle wait."""

    key_ids: set[str] = field(default_factory=set)
    attempts: list[AttemptRow] = field(default_factory=list)
    conversation_states: dict[str, str] = field(default_factory=dict)
    processed_event_counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (consumer, event id)
    completed_events_per_attempt: Counter[str] = field(default_factory=Counter)
    unlocked_events_per_conversation: Counter[str] = field(default_factory=Counter)
    profile_bios: dict[str, str | None] = field(default_factory=dict)  # user id -> bio (None: no profile)
    unpublished_events: int = 0
    dead_lettered: int = 0


@dataclass
class Totals:
    """The figures of the final line, and the parts they are made of."""

    acknowledged: int = 0
    recorded: int = 0
    unlocked: int = 0
    lost_not_recorded: int = 0
    lost_not_unlocked: int = 0
    lost_not_unlocked_unacknowledged: int = 0
    lost_profiles: int = 0
    duplicate_attempts: int = 0
    duplicate_processed: int = 0
    duplicate_completed: int = 0
    duplicate_unlocked: int = 0
    untyped_5xx: int = 0
    scorer_failures_recorded: int = 0
    scorer_failures_in_outage: int = 0
    accepted_submit_seconds: list[float] = field(default_factory=list)
    lost_samples: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.lost_not_recorded + self.lost_not_unlocked + self.lost_profiles

    @property
    def duplicates(self) -> int:
        return self.duplicate_attempts + self.duplicate_processed + self.duplicate_completed + self.duplicate_unlocked

    @property
    def accepted_p95_ms(self) -> float:
        return nearest_rank(self.accepted_submit_seconds, 95) * 1000

    def line(self) -> str:
        """The contract's last line."""
        p95 = self.accepted_p95_ms
        shown = "nan" if math.isnan(p95) else f"{p95:.0f}"
        return (
            f"chaos: acknowledged {self.acknowledged}, recorded {self.recorded}, unlocked {self.unlocked}, "
            f"lost {self.lost}, duplicates {self.duplicates}, untyped_5xx {self.untyped_5xx}, accepted_p95_ms {shown}"
        )

    @property
    def failed(self) -> bool:
        """Whether the run broke a promise: the exit status is then non-zero."""
        return bool(self.lost or self.duplicates or self.untyped_5xx or self.scorer_failures_recorded)

    def __add__(self, other: Totals) -> Totals:
        merged = Totals()
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(merged, name, mine + theirs)
        return merged


def _in_windows(moment: datetime, windows: list[tuple[datetime, datetime]]) -> bool:
    return any(start <= moment <= end for start, end in windows)


def compute_totals(
    ledger: Ledger, snapshot: Snapshot, outage_windows: list[tuple[datetime, datetime]] | None = None
) -> Totals:
    """Apply the definitions of ``bench/chaos.py``'s docstring to what the clients saw and what the database holds.

    ``outage_windows``: when the scorer was down (with a margin), to say how many scorer failures recorded
    as the user's fell inside them."""
    totals = Totals(untyped_5xx=ledger.untyped, accepted_submit_seconds=list(ledger.accepted_submit_seconds))
    by_key: dict[str, list[AttemptRow]] = {}
    for row in snapshot.attempts:
        by_key.setdefault(row.key_id, []).append(row)

    totals.acknowledged = len(ledger.acked_creates) + len(ledger.acked_submits)
    found_creates = [key for key in ledger.acked_creates if key in snapshot.key_ids]
    found_submits = [key for key in ledger.acked_submits if key in by_key]
    totals.recorded = len(found_creates) + len(found_submits)
    totals.lost_not_recorded = totals.acknowledged - totals.recorded
    for key in ledger.acked_creates:
        if key not in snapshot.key_ids and len(totals.lost_samples) < SAMPLES:
            totals.lost_samples.append(f"acknowledged create of key {key}: no key row")
    for key in ledger.acked_submits:
        if key not in by_key and len(totals.lost_samples) < SAMPLES:
            totals.lost_samples.append(f"acknowledged submit to key {key}: no attempt")

    # Every recorded passing attempt must end in an unlocked conversation, whether or not its client heard
    # the answer (a submit cut off by a cancel or a kill may still have committed).
    for row in snapshot.attempts:
        if not row.passed:
            continue
        state = snapshot.conversation_states.get(row.conversation_id)
        acknowledged = row.key_id in ledger.acked_submits
        if state == "UNLOCKED":
            if acknowledged and ledger.acked_submits[row.key_id].passed:
                totals.unlocked += 1
            continue
        totals.lost_not_unlocked += 1
        if not acknowledged:
            totals.lost_not_unlocked_unacknowledged += 1
        if len(totals.lost_samples) < SAMPLES:
            who = "acknowledged" if acknowledged else "unacknowledged"
            totals.lost_samples.append(
                f"{who} passing attempt {row.attempt_id}: conversation {row.conversation_id} is {state}"
            )

    for user, marker in ledger.acked_profiles.items():
        bio = snapshot.profile_bios.get(user)
        if bio is None or marker not in bio:
            totals.lost_profiles += 1
            if len(totals.lost_samples) < SAMPLES:
                totals.lost_samples.append(f"acknowledged profile write of user {user}: bio is {bio!r}")

    totals.duplicate_attempts = sum(len(rows) - 1 for rows in by_key.values() if len(rows) > 1)
    totals.duplicate_processed = sum(n - 1 for n in snapshot.processed_event_counts.values() if n > 1)
    totals.duplicate_completed = sum(n - 1 for n in snapshot.completed_events_per_attempt.values() if n > 1)
    totals.duplicate_unlocked = sum(n - 1 for n in snapshot.unlocked_events_per_conversation.values() if n > 1)

    failed_by_scorer = [row for row in snapshot.attempts if row.scorer_errors]
    totals.scorer_failures_recorded = len(failed_by_scorer)
    totals.scorer_failures_in_outage = sum(
        1 for row in failed_by_scorer if _in_windows(row.submitted_at, outage_windows or [])
    )
    return totals
