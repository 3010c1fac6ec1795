"""Sealing segments: deterministic bytes, chained manifests, and a broken chain is never sealed."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from app.domain.audit_chain import GENESIS_HASH
from app.domain.audit_segment import SegmentRefused, parse_segment_body, seal_segment
from tests.unit.domain.test_audit_chain import chain


def test_segments_chain_and_round_trip() -> None:
    entries = chain(12)
    first = seal_segment(entries[:5], GENESIS_HASH, 1, "audit/")
    second = seal_segment(entries[5:], first.manifest.last_entry_hash, 6, "audit/")
    assert (first.manifest.first_sequence, first.manifest.last_sequence, first.manifest.entry_count) == (1, 5, 5)
    assert second.manifest.first_previous_hash == first.manifest.last_entry_hash
    assert second.manifest.body_key == "audit/segments/000000000000006-000000000000012.jsonl"
    assert first.manifest.body_sha256 == hashlib.sha256(first.body).hexdigest()
    assert parse_segment_body(first.body + second.body) == entries
    assert seal_segment(entries[:5], GENESIS_HASH, 1, "audit/") == first  # same range, same bytes


def test_a_broken_or_unlinked_range_is_refused() -> None:
    entries = chain(6)
    with pytest.raises(SegmentRefused) as refused:
        seal_segment(entries[3:], GENESIS_HASH, 4, "audit/")  # does not link to the previous segment
    assert refused.value.broken.sequence == 4
    entries[4] = msgspec.structs.replace(entries[4], action="profile.deleted")
    with pytest.raises(SegmentRefused) as refused:
        seal_segment(entries, GENESIS_HASH, 1, "audit/")
    assert refused.value.broken.id == entries[4].id
    with pytest.raises(ValueError):
        seal_segment([], GENESIS_HASH, 1, "audit/")
