"""Sealed segments of the audit chain: a contiguous run of entries as JSON lines, and its manifest.

Pure. A segment is sealed only if its entries verify and link to the previous segment's last hash, so
the archived copies form one chain from the genesis hash onwards. The bytes are a function of the
entries alone (no clock in them), so sealing the same range twice gives byte-identical objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from app.domain.audit_chain import CHAIN_VERSION, AuditEntry, ChainBreak, verify

__all__ = [
    "SealedSegment",
    "SegmentBodyError",
    "SegmentManifest",
    "SegmentRefused",
    "manifest_key",
    "parse_segment_body",
    "seal_segment",
    "segment_body",
    "segment_key",
]


_ENTRY = msgspec.json.Decoder(AuditEntry)


class SegmentManifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a segment holds and how it links: stored beside the body, and enough to check the body and
    to chain the next segment without reading this one."""

    chain_version: int
    first_sequence: int
    last_sequence: int
    entry_count: int
    first_previous_hash: str
    last_entry_hash: str
    body_sha256: str
    body_key: str


class SealedSegment(msgspec.Struct, frozen=True):
    """A manifest and the exact body bytes it describes."""

    manifest: SegmentManifest
    body: bytes

    @property
    def manifest_bytes(self) -> bytes:
        return msgspec.json.encode(self.manifest)


class SegmentRefused(Exception):
    """The entries do not form a valid continuation of the chain; nothing may be sealed."""

    def __init__(self, broken: ChainBreak) -> None:
        super().__init__(f"entry {broken.sequence} ({broken.id}): {broken.reason}")
        self.broken = broken


class SegmentBodyError(ValueError):
    """A line of a segment body that is not a valid entry (``line`` counts from 1)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"archived line {line} is not a valid entry ({reason})")
        self.line = line


def segment_key(prefix: str, first_sequence: int, last_sequence: int) -> str:
    """Object key of a segment body; zero-padded so keys sort in chain order."""
    return f"{prefix}segments/{first_sequence:015d}-{last_sequence:015d}.jsonl"


def manifest_key(prefix: str, first_sequence: int, last_sequence: int) -> str:
    return f"{prefix}segments/{first_sequence:015d}-{last_sequence:015d}.manifest.json"


def seal_segment(entries: Sequence[AuditEntry], previous_hash: str, first_sequence: int, prefix: str) -> SealedSegment:
    """Seal ``entries`` (non-empty, in order) as the segment that follows ``previous_hash``.
    Raises :class:`SegmentRefused` naming the first entry that breaks the chain."""
    if not entries:
        raise ValueError("a segment needs at least one entry")
    broken = verify(entries, previous_hash, first_sequence)
    if broken is not None:
        raise SegmentRefused(broken)
    body = segment_body(entries)
    last = entries[-1].sequence
    return SealedSegment(
        SegmentManifest(
            chain_version=CHAIN_VERSION,
            first_sequence=first_sequence,
            last_sequence=last,
            entry_count=len(entries),
            first_previous_hash=previous_hash,
            last_entry_hash=entries[-1].entry_hash,
            body_sha256=hashlib.sha256(body).hexdigest(),
            body_key=segment_key(prefix, first_sequence, last),
        ),
        body,
    )


def segment_body(entries: Sequence[AuditEntry]) -> bytes:
    """The canonical body of ``entries``: one JSON object per entry, each ending in a newline."""
    return b"".join(msgspec.json.encode(entry) + b"\n" for entry in entries)


def parse_segment_body(body: bytes) -> list[AuditEntry]:
    """The entries of a segment body (for checking an archived copy against the chain); blank lines
    are skipped (:func:`segment_body` of the result tells whether the body was canonical). Raises
    :class:`SegmentBodyError` naming the first line that is not a valid entry."""
    entries: list[AuditEntry] = []
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        try:
            entries.append(_ENTRY.decode(line))
        except msgspec.DecodeError as exc:
            raise SegmentBodyError(len(entries) + 1, str(exc)) from None
    return entries
