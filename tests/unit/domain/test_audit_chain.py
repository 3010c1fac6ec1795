"""The pure audit chain: any change, removal, insertion or reordering is found at the right entry."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.audit_chain import (
    GENESIS_HASH,
    AuditActor,
    AuditEntry,
    ChainVerifier,
    change_digest,
    compute_entry_hash,
    seal_entry,
    verify,
)

KEY = b"k" * 32
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def chain(length: int, start_hash: str = GENESIS_HASH, start_sequence: int = 1) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    previous = start_hash
    for offset in range(length):
        entry = seal_entry(
            entry_id=uuid.uuid4(),
            sequence=start_sequence + offset,
            occurred_at=T0 + timedelta(seconds=offset),
            actor=AuditActor(kind="user", id=uuid.uuid4()),
            action="profile.updated",
            subject_type="profile",
            subject_id=uuid.uuid4(),
            request_id=f"req-{offset}",
            trace_id=None,
            change_digest=change_digest(KEY, {"bio": f"text {offset}"}),
            previous_hash=previous,
        )
        entries.append(entry)
        previous = entry.entry_hash
    return entries


def test_an_untouched_chain_verifies() -> None:
    assert verify(chain(20)) is None
    assert verify([]) is None


TAMPERS = {
    "occurred_at": lambda e: e.occurred_at + timedelta(microseconds=1),
    "actor_kind": lambda e: "system",
    "actor_id": lambda e: uuid.uuid4(),
    "action": lambda e: "profile.deleted",
    "subject_type": lambda e: "attempt",
    "subject_id": lambda e: None,
    "request_id": lambda e: "forged",
    "trace_id": lambda e: "0" * 32,
    "change_digest": lambda e: "f" * 64,
    "id": lambda e: uuid.uuid4(),
}


@pytest.mark.parametrize("field", sorted(TAMPERS))
def test_changing_any_field_names_that_entry(field: str) -> None:
    entries = chain(10)
    entries[6] = msgspec.structs.replace(entries[6], **{field: TAMPERS[field](entries[6])})
    broken = verify(entries)
    assert broken is not None and (broken.sequence, broken.id) == (7, entries[6].id)
    assert "entry_hash" in broken.reason


def test_a_rehashed_entry_breaks_the_link_to_the_next() -> None:
    entries = chain(10)
    forged = msgspec.structs.replace(entries[3], action="profile.deleted")
    entries[3] = msgspec.structs.replace(forged, entry_hash=compute_entry_hash(forged))
    broken = verify(entries)
    assert broken is not None and broken.sequence == 5 and broken.id == entries[4].id
    assert "previous_hash" in broken.reason


def test_deleting_an_entry_names_the_one_after_the_gap() -> None:
    entries = chain(10)
    del entries[4]
    broken = verify(entries)
    assert broken is not None and broken.sequence == 6 and broken.id == entries[4].id


def test_inserting_an_entry_is_found() -> None:
    entries = chain(10)
    intruder = chain(1, start_hash=entries[2].entry_hash, start_sequence=4)[0]
    entries.insert(3, intruder)
    broken = verify(entries)
    # The intruder links correctly to its predecessor, so the first entry that no longer fits is the
    # original sequence 4, now following it.
    assert broken is not None and broken.sequence == 4 and broken.id == entries[4].id


def test_reordering_is_found() -> None:
    entries = chain(10)
    entries[2], entries[3] = entries[3], entries[2]
    broken = verify(entries)
    assert broken is not None and broken.sequence == 4 and broken.id == entries[2].id


def test_verification_streams_across_batches_and_segments() -> None:
    entries = chain(30)
    verifier = ChainVerifier()
    for start in range(0, 30, 7):
        assert all(verifier.feed(e) is None for e in entries[start : start + 7])
    assert verifier.checked == 30
    # A later segment verifies on its own from the previous segment's last hash.
    assert verify(entries[10:], entries[9].entry_hash, 11) is None
    assert verify(entries[10:], GENESIS_HASH, 11) is not None


def test_timestamps_hash_the_same_in_any_offset_and_naive_is_refused() -> None:
    entry = chain(1)[0]
    shifted = msgspec.structs.replace(entry, occurred_at=entry.occurred_at.astimezone(timezone(timedelta(hours=5))))
    assert compute_entry_hash(shifted) == entry.entry_hash
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_entry_hash(msgspec.structs.replace(entry, occurred_at=entry.occurred_at.replace(tzinfo=None)))


def test_change_digest_is_keyed_canonical_and_never_the_value() -> None:
    change = {"birth_year": 1990, "consent": ["no photos"]}
    digest = change_digest(KEY, change)
    assert digest == change_digest(KEY, {"consent": ["no photos"], "birth_year": 1990})  # key order
    assert digest != change_digest(b"x" * 32, change)  # keyed: no key, no dictionary attack
    assert "1990" not in (digest or "") and len(digest or "") == 64
    assert change_digest(KEY, None) is None
    with pytest.raises(TypeError):
        change_digest(KEY, {"x": object()})


def test_actor_from_principal() -> None:
    from app.auth import Principal

    uid = uuid.uuid4()

    def principal(scopes: frozenset[str], service: bool = False, moderator: bool = False) -> Principal:
        return Principal(uid, "authenticated", service, scopes, T0, is_moderator=moderator)

    assert AuditActor.from_principal(principal(frozenset())) == AuditActor("user", uid)
    # Moderator comes from the verified roles claim (Principal.is_moderator), never from a scope claim.
    assert AuditActor.from_principal(principal(frozenset({"moderator"}))) == AuditActor("user", uid)
    assert AuditActor.from_principal(principal(frozenset(), moderator=True)) == AuditActor("moderator", uid)
    assert AuditActor.from_principal(principal(frozenset(), service=True)) == AuditActor("service", uid)


@given(st.integers(min_value=0, max_value=7), st.data())
def test_any_single_field_change_is_caught(index: int, data: st.DataObject) -> None:
    entries = chain(8)
    field = data.draw(st.sampled_from(sorted(TAMPERS)))
    entries[index] = msgspec.structs.replace(entries[index], **{field: TAMPERS[field](entries[index])})
    broken = verify(entries)
    assert broken is not None and broken.sequence == index + 1
