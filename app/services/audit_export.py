"""Sealing the audit chain into segments and archiving them under Object Lock.

Export is resumable and never seals a range twice in different ways: each segment starts right after
the last one recorded in ``audit_segments`` (append-only) and links to its last hash; an upload that
finished but was not recorded (a crash in between) is found by its manifest and recorded as it is,
after checking it against the chain and its Object Lock, instead of being sealed anew.

One export at a time: a round first takes the store's export lock (a PostgreSQL session advisory lock,
so across instances and the CLI; a process-local lock on SQLite) and, when another holds it, skips the
round quietly. Objects are put only where their key is still free (``If-None-Match: *``), and a segment
is recorded only if no other exporter recorded it first (checked inside the write transaction), so even
exporters the lock does not reach (several processes on one SQLite file) never write a key twice nor
fail on the unique keys of ``audit_segments``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from app.adapters.audit_archive import ArchiveConflict, ArchiveRefused, S3AuditArchive, lock_problem
from app.db.audit_store import AuditStore, SegmentRecord
from app.db.engine import Database
from app.domain.audit_chain import GENESIS_HASH
from app.domain.audit_segment import SealedSegment, SegmentManifest, manifest_key, seal_segment
from app.settings import AuditSettings

__all__ = ["AuditExportLoop", "AuditExporter", "archive_from_settings"]

log = structlog.get_logger(__name__)


def archive_from_settings(settings: AuditSettings) -> S3AuditArchive:
    """The S3 archive ``[audit]`` describes."""
    return S3AuditArchive(
        bucket=settings.s3_bucket,
        region=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        prefix=settings.s3_prefix,
    )


class AuditExporter:
    """Seals full segments (or, on request, the partial tail) and archives them in chain order."""

    def __init__(
        self,
        db: Database,
        store: AuditStore,
        archive: S3AuditArchive,
        settings: AuditSettings,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._store = store
        self._archive = archive
        self._settings = settings
        self._clock = clock

    async def export(
        self, *, partial: bool = False, progress: Callable[[SegmentRecord], None] | None = None
    ) -> list[SegmentRecord]:
        """Archive every segment ready to seal; returns those recorded now (none when another export
        holds the lock or gets there first). ``partial`` also seals the entries after the last full
        segment. Raises :class:`app.adapters.audit_archive.AuditArchiveError` for a bucket without Object
        Lock, :class:`app.adapters.audit_archive.ArchiveRefused` for an object already in the bucket
        that cannot be taken as the segment, and :class:`app.domain.audit_segment.SegmentRefused` for a
        broken chain."""
        async with self._store.export_lock() as acquired:
            if not acquired:
                log.debug("audit export skipped: another export is running")
                return []
            try:
                return await self._export(partial, progress)
            except ArchiveConflict as exc:
                log.info("audit export stopped: another export is writing the same segment", detail=str(exc))
                return []

    async def _export(self, partial: bool, progress: Callable[[SegmentRecord], None] | None) -> list[SegmentRecord]:
        await self._archive.check_object_lock()
        done: list[SegmentRecord] = []
        while True:
            last = await self._store.last_segment()
            after = last.last_sequence if last else 0
            previous_hash = last.last_entry_hash if last else GENESIS_HASH
            resumed = await self._archive.find_manifest(after + 1)
            if resumed is not None:
                record = await self._adopt(resumed[0], resumed[1], after, previous_hash)
            else:
                entries = await self._store.batch(after, self._settings.segment_entries)
                if not entries or (len(entries) < self._settings.segment_entries and not partial):
                    return done
                segment = seal_segment(entries, previous_hash, after + 1, self._settings.s3_prefix)
                record = await self._upload(segment)

            async def write(record: SegmentRecord = record, after: int = after) -> bool:
                # Inside the write transaction (exclusive on SQLite): an exporter the export lock does
                # not reach may have recorded this range meanwhile; then it is done, not an error.
                current = await self._store.last_segment()
                if (current.last_sequence if current else 0) != after:
                    return False
                await self._store.record_segment(record)
                return True

            if not await self._db.write(write):
                log.info("audit export stopped: segment recorded by another export", first=after + 1)
                return done
            done.append(record)
            if progress is not None:
                progress(record)

    async def _upload(self, segment: SealedSegment) -> SegmentRecord:
        now = self._clock()
        retain_until = now + timedelta(days=self._settings.retention_days)
        version_id, retain_until = await self._archive.put_segment(
            segment, retain_until, retention_days=self._settings.retention_days, now=now
        )
        return self._record(segment, retain_until, version_id)

    async def _adopt(self, key: str, manifest: SegmentManifest, after: int, previous_hash: str) -> SegmentRecord:
        """Record an uploaded-but-unrecorded segment, if it is exactly the chain's next range and both
        of its objects are under COMPLIANCE retention of ``audit.retention_days``; the body's version
        read is the one recorded. Raises :class:`ArchiveRefused` otherwise (nothing is recorded; the
        export loop logs it once per round)."""
        entries = await self._store.batch(after, manifest.entry_count)
        segment = seal_segment(entries, previous_hash, after + 1, self._settings.s3_prefix)
        body_url = f"s3://{self._archive.bucket}/{manifest.body_key}"
        head = await self._archive.head_if_present(manifest.body_key)
        if head is None:
            raise ArchiveRefused(f"archived segment {key} has no body {body_url}; refusing to continue")
        body = await self._archive.get_if_present(manifest.body_key, head["VersionId"])
        if segment.manifest != manifest or body != segment.body:
            raise ArchiveRefused(f"archived segment {key} does not match the chain; refusing to continue")
        now = self._clock()
        manifest_head = await self._archive.head_if_present(key)
        for url, found in ((f"s3://{self._archive.bucket}/{key}", manifest_head), (body_url, head)):
            problem = "is missing" if found is None else lock_problem(found, now, self._settings.retention_days)
            if problem is not None:
                version = f" (version {found['VersionId']})" if found is not None else ""
                raise ArchiveRefused(f"archived segment {url}{version} {problem}; refusing to adopt it")
        log.info("audit segment found already archived", first=manifest.first_sequence, last=manifest.last_sequence)
        return self._record(segment, head["RetainUntilDate"], head["VersionId"])

    def _record(self, segment: SealedSegment, retain_until: datetime, version_id: str | None) -> SegmentRecord:
        m = segment.manifest
        return SegmentRecord(
            id=uuid.uuid4(),
            first_sequence=m.first_sequence,
            last_sequence=m.last_sequence,
            entry_count=m.entry_count,
            first_previous_hash=m.first_previous_hash,
            last_entry_hash=m.last_entry_hash,
            body_sha256=m.body_sha256,
            bucket=self._archive.bucket,
            object_key=m.body_key,
            manifest_key=manifest_key(self._settings.s3_prefix, m.first_sequence, m.last_sequence),
            version_id=version_id,
            retain_until=retain_until,
            sealed_at=self._clock(),
        )


class AuditExportLoop:
    """Runs :meth:`AuditExporter.export` every ``interval`` seconds in the app (full segments only).
    A failure is logged and retried next round; it never stops the service."""

    def __init__(self, exporter: AuditExporter, interval: float) -> None:
        self._exporter = exporter
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AuditExportLoop:
        self._task = asyncio.create_task(self._run(), name="audit-export")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                sealed = await self._exporter.export()
                if sealed:
                    log.info("audit segments exported", segments=len(sealed))
            except Exception as exc:  # noqa: BLE001 - logged and retried; the service keeps running
                log.error("audit export failed", error_type=type(exc).__name__, error=str(exc))
            await asyncio.sleep(self._interval)
