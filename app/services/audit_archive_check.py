"""``ck audit verify --against-archive``: re-read every sealed segment from the bucket and check it.

Only the configured bucket (``audit.s3_bucket``) is read: a record naming another bucket is a mismatch,
never followed (whoever can write ``audit_segments`` could otherwise point it at a bucket they control).
For each segment recorded in ``audit_segments`` (in chain order) the manifest and body are downloaded
and checked: the manifest says what the record says, the body's SHA-256 is the one both name, the
archived entries re-hash into an unbroken chain ending at the manifest's last hash, the segment links
to the one before it, and every archived entry is byte for byte (canonical encoding) the database row of
the same sequence. Each failing segment yields its first mismatch; checking goes on with the next
segment (links are taken from the records, so one bad segment does not condemn the rest). Objects under
the prefix that no record names (an upload that finished just before a crash) are reported as info.

The body is read by its recorded ``version_id`` (when there is one), and a newer version put over that
key is a mismatch even when its bytes are the same; so is any key of the segment with more than one
version or with a delete marker (the exporter never writes a key twice). The version read of the body
and of the manifest (the latest; its version is not recorded) must be under COMPLIANCE Object Lock until
at least ``retention_days`` after it was archived: the earlier of the record's ``sealed_at`` (written
just after the upload) and the version's ``LastModified``, less
:data:`app.adapters.audit_archive.LOCK_SLACK` (see :func:`~app.adapters.audit_archive.lock_problem`).
Retention is read from ``head_object``, as not every S3-compatible server implements ``GetObjectRetention``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import msgspec

from app.adapters.audit_archive import S3AuditArchive, lock_problem
from app.db.audit_store import AuditStore, SegmentRecord
from app.domain.audit_chain import GENESIS_HASH, AuditEntry, verify
from app.domain.audit_segment import SegmentBodyError, SegmentManifest, parse_segment_body, segment_body

__all__ = ["ArchiveMismatch", "ArchiveReport", "SegmentCheck", "check_archive"]

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
    *,
    retention_days: int,
) -> ArchiveReport:
    """Check every recorded segment against its archived copy and the database (``batch_size`` rows per
    query), and its objects' Object Lock against ``retention_days`` (``audit.retention_days``). Raises
    :class:`app.adapters.audit_archive.AuditArchiveError` when the bucket cannot be read at all; an object
    merely absent is a mismatch, not an error."""
    records = await store.segments()
    mismatches: list[ArchiveMismatch] = []
    entries = 0
    expected_sequence, expected_hash = 1, GENESIS_HASH
    for record in records:
        mismatch = _link(record, expected_sequence, expected_hash)
        if mismatch is None and record.bucket != archive.bucket:
            mismatch = ArchiveMismatch(
                record.first_sequence,
                record.last_sequence,
                None,
                f"recorded in bucket {record.bucket!r}, not the configured audit.s3_bucket {archive.bucket!r} "
                "(not followed)",
            )
        if mismatch is None:
            mismatch = await _check_segment(record, archive, store, batch_size, retention_days)
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
    record: SegmentRecord, archive: S3AuditArchive, store: AuditStore, batch_size: int, retention_days: int
) -> ArchiveMismatch | None:
    def mismatch(problem: str, sequence: int | None = None) -> ArchiveMismatch:
        return ArchiveMismatch(record.first_sequence, record.last_sequence, sequence, problem)

    manifest_url = f"s3://{record.bucket}/{record.manifest_key}"
    body_url = f"s3://{record.bucket}/{record.object_key}"
    manifest_head = await archive.head_if_present(record.manifest_key)
    raw_manifest = None
    if manifest_head is not None:  # read the very version whose lock is checked below
        raw_manifest = await archive.get_if_present(record.manifest_key, manifest_head["VersionId"])
    if manifest_head is None or raw_manifest is None:
        return mismatch(f"manifest {manifest_url} is missing from the bucket")
    try:
        manifest = msgspec.json.decode(raw_manifest, type=SegmentManifest)
    except msgspec.DecodeError as exc:
        return mismatch(f"manifest is not a valid segment manifest ({exc})")
    differs = [name for name in _MANIFEST_FIELDS if getattr(manifest, name) != getattr(record, name)]
    differs += ["body_sha256"] if manifest.body_sha256 != record.body_sha256 else []
    differs += ["body_key"] if manifest.body_key != record.object_key else []
    if differs:
        return mismatch(f"manifest differs from the recorded segment in: {', '.join(differs)}")

    pinned = record.version_id
    body_head = await archive.head_if_present(record.object_key, pinned)
    body = None
    if body_head is not None:
        body = await archive.get_if_present(record.object_key, pinned or body_head["VersionId"])
    if body_head is None or body is None:
        version = f" (recorded version {pinned})" if pinned else ""
        return mismatch(f"body {body_url}{version} is missing from the bucket")
    if pinned:
        latest = await archive.head_if_present(record.object_key)
        if latest is None or latest["VersionId"] != pinned:
            newer = f"version {latest['VersionId']}" if latest is not None else "a delete marker"
            return mismatch(
                f"body {body_url} was overwritten: its latest version is {newer}, not the recorded {pinned}"
            )
    if hashlib.sha256(body).hexdigest() != manifest.body_sha256:
        return mismatch("body SHA-256 differs from the manifest's and the recorded one")
    for what, url, head in (("manifest", manifest_url, manifest_head), ("body", body_url, body_head)):
        problem = lock_problem(head, record.sealed_at, retention_days)
        if problem is not None:
            return mismatch(f"{what} {url} (version {head['VersionId']}) {problem}")
    for what, url, key in (("manifest", manifest_url, record.manifest_key), ("body", body_url, record.object_key)):
        versions = await archive.versions(key)
        markers = sum(1 for v in versions if v["DeleteMarker"])
        if len(versions) > 1:
            also = f" ({markers} of them delete markers)" if markers else ""
            return mismatch(f"{what} {url} has {len(versions)} versions{also}; an exported key has exactly one")

    try:
        archived = parse_segment_body(body)
    except SegmentBodyError as exc:
        return mismatch(str(exc), record.first_sequence + exc.line - 1)
    if segment_body(archived) != body:
        return mismatch("archived body is not in the canonical encoding")
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
            if msgspec.json.encode(row) != msgspec.json.encode(expected):
                fields = [f for f in AuditEntry.__struct_fields__ if getattr(row, f) != getattr(expected, f)]
                what = f"in: {', '.join(fields)}" if fields else "in its encoding"
                return mismatch(f"database row differs from the archived entry {what}", expected.sequence)
            position += 1
        if not rows:
            return mismatch("row missing from the database", archived[position].sequence)
        after = rows[-1].sequence
    return None
