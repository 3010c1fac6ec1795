"""Sealing the audit chain into segments and archiving them under Object Lock.

Export is resumable and never seals a range twice in different ways: each segment starts right after
the last one recorded in ``audit_segments`` (append-only) and links to its last hash; an upload that
finished but was not recorded (a crash in between) is found by its manifest and recorded as it is,
after checking it against the chain, instead of being sealed anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog

from app.adapters.audit_archive import AuditArchiveError, S3AuditArchive
from app.db.audit_store import AuditStore, SegmentRecord
from app.db.engine import Database
from app.domain.audit_chain import GENESIS_HASH
from app.domain.audit_segment import SealedSegment, manifest_key, seal_segment
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
        """Archive every segment ready to seal; returns those recorded now. ``partial`` also seals the
        entries after the last full segment. Raises :class:`AuditArchiveError` for a bucket without
        Object Lock and :class:`app.domain.audit_segment.SegmentRefused` for a broken chain."""
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
            async with self._db.transaction():
                await self._store.record_segment(record)
            done.append(record)
            if progress is not None:
                progress(record)

    async def _upload(self, segment: SealedSegment) -> SegmentRecord:
        retain_until = self._clock() + timedelta(days=self._settings.retention_days)
        version_id = await self._archive.put_segment(segment, retain_until)
        return self._record(segment, retain_until, version_id)

    async def _adopt(self, key: str, manifest: Any, after: int, previous_hash: str) -> SegmentRecord:
        """Record an uploaded-but-unrecorded segment, if it is exactly the chain's next range."""
        entries = await self._store.batch(after, manifest.entry_count)
        segment = seal_segment(entries, previous_hash, after + 1, self._settings.s3_prefix)
        if segment.manifest != manifest or await self._archive.get(manifest.body_key) != segment.body:
            raise AuditArchiveError(f"archived segment {key} does not match the chain; refusing to continue")
        retention = await self._archive.retention(manifest.body_key)
        log.info("audit segment found already archived", first=manifest.first_sequence, last=manifest.last_sequence)
        return self._record(segment, retention["RetainUntilDate"], None)

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
