"""What a moderator's override does to a conversation, and the checks on its inputs. Pure: callers pass
``now`` and the history; nothing here reads or writes anything.

The decisions:

``UNLOCK``
    The conversation becomes UNLOCKED, as if the attempt had passed (a scorer got it wrong). Both people
    are told, exactly as after a pass. Lifts a moderator's lock. Already unlocked: nothing changes.
``LOCK``
    Revokes an unlock (for example one won by prompt injection): UNLOCKED becomes LOCKED, the only way
    an unlock is ever undone, and the conversation stays under the moderator's lock: no new quiz for
    the pair (create answers FORBIDDEN), the pair's open quizzes are superseded and no quiz is submitted
    (FORBIDDEN), and a pass arriving later (an attempt in flight, a redelivered event, the reconciler)
    does not unlock, until a moderator lifts the lock with ``UNLOCK`` or ``ALLOW_RETRY``. A pass the
    lock covers (:func:`lock_covers`) never unlocks, even after the lift. A conversation that is not
    unlocked: nothing changes.
``ALLOW_RETRY``
    Excuses this failed attempt: it no longer counts towards the cooldown or the daily limit, so the
    requester may try again as soon as their other failures allow (usually at once), and is told so.
    On a conversation under a moderator's lock it lifts the lock (whatever the attempt's outcome) and
    the requester may try again under the usual retry rules. Otherwise refused for a passed attempt or
    an unlocked conversation; a second excuse of the same attempt changes nothing.

States here are what the attempt's requester sees (``app.domain.requester_state.participant_view``).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
from msgspec import Struct

from app.domain.quiz import UnlockState
from app.domain.unlock_rules import WINDOW, RetryPolicy, may_start_attempt

__all__ = [
    "DecisionRefused",
    "OverrideDecision",
    "OverrideOutcome",
    "PageCursor",
    "TimeOutOfRange",
    "clean_reason",
    "decide_override",
    "decode_cursor",
    "encode_cursor",
    "lock_covers",
    "utc_in_range",
]

# Control characters other than tab and newlines have no place in a reason and can hide text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_MAX_CURSOR_CHARS = 200
# Times a moderator may page or filter by: anything else is a mistake or a probe, and at the extremes an
# offset pushes the instant past what ``datetime`` (and the database drivers) can hold.
MIN_YEAR, MAX_YEAR = 2000, 9999


class OverrideDecision(str, enum.Enum):
    """A moderator's decision on an attempt (see the module docstring)."""

    UNLOCK = "UNLOCK"
    LOCK = "LOCK"
    ALLOW_RETRY = "ALLOW_RETRY"


class OverrideOutcome(Struct, frozen=True):
    """The conversation after the decision; ``changed`` is false when the decision changes nothing."""

    state: UnlockState
    retry_available_at: datetime | None
    changed: bool


class DecisionRefused(ValueError):
    """The decision does not apply to this attempt or conversation (a conflict, not bad input)."""


def decide_override(
    decision: OverrideDecision,
    current: UnlockState,
    *,
    attempt_passed: bool,
    already_excused: bool,
    other_failures: Sequence[datetime],
    now: datetime,
    policy: RetryPolicy,
    moderation_locked: bool = False,
) -> OverrideOutcome:
    """Apply ``decision`` to a conversation in state ``current``. ``other_failures`` are the requester's
    failed attempts on the conversation that still count, this attempt excluded (ALLOW_RETRY only).
    ``moderation_locked``: a moderator's LOCK holds (only ALLOW_RETRY and UNLOCK lift it)."""
    if decision is OverrideDecision.UNLOCK:
        if current is UnlockState.UNLOCKED:
            return OverrideOutcome(current, None, changed=False)
        return OverrideOutcome(UnlockState.UNLOCKED, None, changed=True)
    if decision is OverrideDecision.LOCK:
        if current is not UnlockState.UNLOCKED:
            return OverrideOutcome(current, None, changed=False)
        return OverrideOutcome(UnlockState.LOCKED, None, changed=True)
    if moderation_locked and current is not UnlockState.UNLOCKED:
        recent = [f for f in other_failures if f > now - WINDOW]
        state = UnlockState.COOLDOWN if len(recent) >= policy.max_attempts_per_day else UnlockState.RETRY_AVAILABLE
        return OverrideOutcome(state, may_start_attempt(recent, now, policy) or now, changed=True)
    if attempt_passed:
        raise DecisionRefused("This attempt passed: there is no failure to excuse.")
    if current is UnlockState.UNLOCKED:
        raise DecisionRefused("The conversation is unlocked: there is nothing to retry.")
    if already_excused:
        return OverrideOutcome(current, None, changed=False)
    recent = [f for f in other_failures if f > now - WINDOW]
    state = UnlockState.COOLDOWN if len(recent) >= policy.max_attempts_per_day else UnlockState.RETRY_AVAILABLE
    return OverrideOutcome(state, may_start_attempt(recent, now, policy) or now, changed=True)


def lock_covers(decisions: Sequence[tuple[OverrideDecision, datetime]], submitted_at: datetime) -> bool:
    """Whether a moderator's LOCK covers a pass submitted at ``submitted_at``, given the conversation's
    decisions (any order): a LOCK decided at or after it (the pass was revoked), or one decided before it
    and not lifted (UNLOCK or ALLOW_RETRY) by the time it was submitted (it was taken under the lock).
    Such a pass never unlocks, even once the lock is lifted; only a moderator's UNLOCK does."""
    lifts = [at for decision, at in decisions if decision is not OverrideDecision.LOCK]
    return any(
        decision is OverrideDecision.LOCK and not any(locked_at < lifted <= submitted_at for lifted in lifts)
        for decision, locked_at in decisions
    )


def clean_reason(text: str, max_chars: int) -> str:
    """The reason as stored: trimmed, non-empty, at most ``max_chars``, no control or bidi characters.
    Raises ``ValueError`` (whose message never quotes the reason)."""
    reason = text.strip()
    if not reason:
        raise ValueError("A reason is required.")
    if len(reason) > max_chars:
        raise ValueError(f"The reason is longer than {max_chars} characters.")
    if _CONTROL.search(reason):
        raise ValueError("The reason contains control characters.")
    return reason


class PageCursor(Struct, frozen=True, array_like=True):
    """Where a page of attempts ended: the last row's ``submitted_at`` and id (newest first)."""

    submitted_at: datetime
    id: uuid.UUID


def encode_cursor(cursor: PageCursor) -> str:
    """An opaque, URL-safe token for ``cursor``."""
    return base64.urlsafe_b64encode(msgspec.json.encode(cursor)).decode().rstrip("=")


def decode_cursor(token: str) -> PageCursor:
    """The cursor in ``token``; ``ValueError`` for anything :func:`encode_cursor` did not make."""
    if not token or len(token) > _MAX_CURSOR_CHARS:
        raise ValueError("The cursor is not valid.")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        cursor = msgspec.json.decode(raw, type=PageCursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValueError("The cursor is not valid.") from None
    try:
        return PageCursor(utc_in_range(cursor.submitted_at), cursor.id)
    except ValueError:
        raise ValueError("The cursor is not valid.") from None


class TimeOutOfRange(ValueError):
    """A time without a UTC offset, or outside years :data:`MIN_YEAR`..:data:`MAX_YEAR` once in UTC."""


def utc_in_range(value: datetime) -> datetime:
    """``value`` in UTC; :class:`TimeOutOfRange` when it has no offset or falls outside the accepted
    years once in UTC (never ``OverflowError``, e.g. for ``0001-01-01T00:00:00+01:00``)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise TimeOutOfRange("A time needs a UTC offset (e.g. ...Z).")
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        utc = None
    if utc is None or not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise TimeOutOfRange(f"A time must fall in the years {MIN_YEAR} to {MAX_YEAR} (UTC).")
    return utc
