"""``ck audit verify --against-archive``: re-read every sealed segment from the bucket and check it.

For each segment recorded in ``audit_segments`` (in chain order) the manifest and body are downloaded
and checked: the manifest says what the record says, the body's SHA-256 is the one both name, the
archived entries re-hash into an unbroken chain ending at the manifest's last hash, the segment links
to the one before it, and every archived entry is byte for byte (canonical encoding) the database row of
the same sequence. Each failing segment yields its first mismatch; checking goes on with the next
segment (links are taken from the records, so one bad segment does not condemn the rest). Objects under
the prefix that no record names (an upload that finished just before a crash) are reported as info.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import msgspec

from app.adapters.audit_archive import S3AuditArchive
from app.db.audit_store import AuditStore, SegmentRecord
from app.domain.audit_chain import GENESIS_HASH, AuditEntry, verify
from app.domain.audit_segment import SegmentManifest

__all__ = ["ArchiveMismatch", "ArchiveReport", "SegmentCheck", "check_archive"]

_ENTRY = msgspec.json.Decoder(AuditEntry)
_MANIFEST_FIELDS = ("first_sequence", "last_sequence", "entry_count", "first_previous_hash", "last_entry_hash")


class ArchiveMismatch(msgspec.Struct, frozen=True):
    """The first thing in a segment that does not agree; ``sequence`` is ``None`` when the problem is
    the segment as a whole (a missing object, a manifest that disagrees)."""

    first_sequence: int
    last_sequence: int
    sequence: int | None
    problem: str

    def __str__(self) -> str:
        where = f" at sequence {self.sequence}" if self.sequence is not None else ""
        return f"segment {self.first_sequence}-{self.last_sequence}{where}: {self.problem}"


class SegmentCheck(msgspec.Struct, frozen=True):
    """One segment's outcome, handed to the progress callback as soon as it is known."""

    record: SegmentRecord
    mismatch: ArchiveMismatch | None


class ArchiveReport(msgspec.Struct, frozen=True):
    """Segments recorded, entries of the agreeing segments, the first mismatch of each disagreeing
    segment (chain order), and keys in ``bucket`` no record names (info only)."""

    bucket: str
    segments: int
    entries: int
    mismatches: list[ArchiveMismatch]
    unrecorded: list[str]

    @property
    def first(self) -> ArchiveMismatch | None:
        return self.mismatches[0] if self.mismatches else None


async def check_archive(
    store: AuditStore,
    archive: S3AuditArchive,
    batch_size: int,
    progress: Callable[[SegmentCheck], None] | None = None,
) -> ArchiveReport:
    """Check every recorded segment against its archived copy and the database (``batch_size`` rows per
    query). Raises :class:`app.adapters.audit_archive.AuditArchiveError` when the bucket cannot be read
    at all; an object merely absent is a mismatch, not an error."""
    records = await store.segments()
    archives: dict[str, S3AuditArchive] = {}
    mismatches: list[ArchiveMismatch] = []
    entries = 0
    expected_sequence, expected_hash = 1, GENESIS_HASH
    for record in records:
        bucket = archives.setdefault(record.bucket, archive.for_bucket(record.bucket))
        mismatch = _link(record, expected_sequence, expected_hash)
        if mismatch is None:
            mismatch = await _check_segment(record, bucket, store, batch_size)
        if mismatch is None:
            entries += record.entry_count
        else:
            mismatches.append(mismatch)
        if progress is not None:
            progress(SegmentCheck(record, mismatch))
        expected_sequence, expected_hash = record.last_sequence + 1, record.last_entry_hash
    recorded = {key for r in records if r.bucket == archive.bucket for key in (r.object_key, r.manifest_key)}
    unrecorded = sorted(key for key in await archive.segment_keys() if key not in recorded)
    return ArchiveReport(archive.bucket, len(records), entries, mismatches, unrecorded)


def _link(record: SegmentRecord, expected_sequence: int, expected_hash: str) -> ArchiveMismatch | None:
    if record.first_sequence != expected_sequence:
        return ArchiveMismatch(
            record.first_sequence,
            record.last_sequence,
            record.first_sequence,
            f"segment starts at sequence {record.first_sequence} where {expected_sequence} was expected "
            "(gap or overlap with the previous segment)",
        )
    if record.first_previous_hash != expected_hash:
        return ArchiveMismatch(
            record.first_sequence,
            record.last_sequence,
            record.first_sequence,
            "first previous_hash is not the previous segment's last hash",
        )
    return None


async def _check_segment(
    record: SegmentRecord, archive: S3AuditArchive, store: AuditStore, batch_size: int
) -> ArchiveMismatch | None:
    def mismatch(problem: str, sequence: int | None = None) -> ArchiveMismatch:
        return ArchiveMismatch(record.first_sequence, record.last_sequence, sequence, problem)

    raw_manifest = await archive.get_if_present(record.manifest_key)
    if raw_manifest is None:
        return mismatch(f"manifest s3://{record.bucket}/{record.manifest_key} is missing from the bucket")
    try:
        manifest = msgspec.json.decode(raw_manifest, type=SegmentManifest)
    except msgspec.DecodeError as exc:
        return mismatch(f"manifest is not a valid segment manifest ({exc})")
    differs = [name for name in _MANIFEST_FIELDS if getattr(manifest, name) != getattr(record, name)]
    differs += ["body_sha256"] if manifest.body_sha256 != record.body_sha256 else []
    differs += ["body_key"] if manifest.body_key != record.object_key else []
    if differs:
        return mismatch(f"manifest differs from the recorded segment in: {', '.join(differs)}")

    body = await archive.get_if_present(record.object_key)
    if body is None:
        return mismatch(f"body s3://{record.bucket}/{record.object_key} is missing from the bucket")
    if hashlib.sha256(body).hexdigest() != manifest.body_sha256:
        return mismatch("body SHA-256 differs from the manifest's and the recorded one")

    lines = [line for line in body.split(b"\n") if line]
    archived: list[AuditEntry] = []
    for index, line in enumerate(lines):
        try:
            archived.append(_ENTRY.decode(line))
        except msgspec.DecodeError:
            return mismatch(f"archived line {index + 1} is not a valid entry", record.first_sequence + index)
    broken = verify(archived, manifest.first_previous_hash, manifest.first_sequence)
    if broken is not None:
        return mismatch(f"archived entry: {broken.reason}", broken.sequence)
    if len(archived) != manifest.entry_count:
        return mismatch(f"archived body holds {len(archived)} entries, the manifest {manifest.entry_count}")
    if archived[-1].entry_hash != manifest.last_entry_hash:
        return mismatch("archived entries do not re-hash to the manifest's last hash", archived[-1].sequence)

    # Byte for byte against the database, batch by batch (keyset pages, so memory stays flat).
    after, position = record.first_sequence - 1, 0
    while position < len(archived):
        rows = await store.batch(after, batch_size, up_to=record.last_sequence)
        for row in rows:
            expected = archived[position]
            if row.sequence != expected.sequence:
                return mismatch("row missing from the database", expected.sequence)
            if msgspec.json.encode(row) != lines[position]:
                fields = [f for f in AuditEntry.__struct_fields__ if getattr(row, f) != getattr(expected, f)]
                what = f"in: {', '.join(fields)}" if fields else "in its encoding"
                return mismatch(f"database row differs from the archived entry {what}", expected.sequence)
            position += 1
        if not rows:
            return mismatch("row missing from the database", archived[position].sequence)
        after = rows[-1].sequence
    return None
