"""Write-once storage of sealed audit segments: S3 (or any S3-compatible server) with Object Lock.

Every object is put with ``ObjectLockMode=COMPLIANCE`` and a retain-until date, so not even the
bucket's owner can delete or overwrite that version before the date, and conditionally
(``If-None-Match: *``), so a key that already has an object never gets a second version from an
exporter. (Object Lock protects versions, not keys: anyone allowed to put may still add a newer version
or a delete marker; ``ck audit verify --against-archive`` reports both.) A bucket without Object Lock
would give no such guarantee, so :meth:`S3AuditArchive.check_object_lock` refuses it before anything
is uploaded. boto3 is synchronous: each call runs in a worker thread. Credentials come from boto3's
standard chain (environment, shared config, instance role) and are never passed through or logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import datetime, timedelta
from typing import Any

import structlog

from app.domain.audit_segment import SealedSegment, SegmentManifest, manifest_key

__all__ = ["LOCK_SLACK", "ArchiveConflict", "ArchiveRefused", "AuditArchiveError", "S3AuditArchive", "lock_problem"]

log = structlog.get_logger(__name__)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})
LOCK_SLACK = timedelta(hours=1)
"""Allowed shortfall of a retain-until date: the exporter computes it before the upload and the server
keeps it to the second, and this host's and the server's clocks may differ a little."""


class AuditArchiveError(Exception):
    """The archive cannot be used as configured (no Object Lock, unreachable, refused a write)."""


class ArchiveRefused(AuditArchiveError):
    """An object already in the bucket cannot be taken as a sealed segment: different bytes, or not
    under COMPLIANCE retention of ``audit.retention_days``. Nothing is recorded; export stops there."""


class ArchiveConflict(AuditArchiveError):
    """Another exporter is writing the same key right now; this round stops and the next resumes."""


class S3AuditArchive:
    """Puts sealed segments under Object Lock retention and reads back what was put."""

    def __init__(self, *, bucket: str, region: str, endpoint_url: str | None, prefix: str) -> None:
        if not bucket:
            raise AuditArchiveError("audit.s3_bucket is not set")
        self.bucket = bucket
        self.prefix = prefix
        self._region = region
        self._endpoint_url = endpoint_url
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            import boto3  # loaded only where export is used

            self._client = boto3.client("s3", region_name=self._region, endpoint_url=self._endpoint_url)
        return self._client

    async def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(getattr(self._s3(), method), **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            raise AuditArchiveError(f"S3 {method} on bucket {self.bucket!r} failed: {code}") from exc
        except BotoCoreError as exc:
            raise AuditArchiveError(f"S3 {method} on bucket {self.bucket!r} failed: {type(exc).__name__}") from exc

    async def check_object_lock(self) -> None:
        """Raise :class:`AuditArchiveError` unless the bucket has Object Lock enabled."""
        try:
            answer = await self._call("get_object_lock_configuration", Bucket=self.bucket)
        except AuditArchiveError as exc:
            raise AuditArchiveError(
                f"refusing bucket {self.bucket!r}: Object Lock is not enabled on it ({exc})"
            ) from None
        if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise AuditArchiveError(f"refusing bucket {self.bucket!r}: Object Lock is not enabled on it")

    async def _put(self, key: str, body: bytes, content_type: str, retain_until: datetime) -> str | None:
        """Put a new object under ``key``: the new version's id (``""`` from a server that gives none), or
        ``None`` when the key already has an object (the put, conditional on ``If-None-Match: *``, was
        refused)."""
        try:
            answer = await self._call(
                "put_object",
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                # S3 requires an integrity header on Object Lock puts; MD5 here is a transfer checksum only.
                ContentMD5=base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
                ObjectLockMode="COMPLIANCE",
                ObjectLockRetainUntilDate=retain_until,
                # Never a second version of a segment key: a concurrent or crashed exporter's object is
                # checked and taken as it is instead (see put_segment).
                IfNoneMatch="*",
            )
        except AuditArchiveError as exc:
            if _code(exc) == "PreconditionFailed":
                return None
            if _code(exc) == "ConditionalRequestConflict":
                raise ArchiveConflict(f"another export is writing s3://{self.bucket}/{key}") from exc
            raise
        return answer.get("VersionId") or ""

    async def _existing(self, key: str, body: bytes, retention_days: int, now: datetime) -> dict[str, Any]:
        """The head of the object already under ``key``, if it holds exactly ``body`` under COMPLIANCE
        retention of ``retention_days``; else :class:`ArchiveRefused`."""
        url = f"s3://{self.bucket}/{key}"
        head = await self.head_if_present(key)
        if head is None:  # put refused, then gone: a delete marker was put in between
            raise ArchiveConflict(f"{url} changed while it was being written")
        if await self.get_if_present(key, head["VersionId"]) != body:
            raise ArchiveRefused(f"{url} already holds different bytes; refusing to continue")
        problem = lock_problem(head, now, retention_days)
        if problem is not None:
            raise ArchiveRefused(f"{url} (version {head['VersionId']}) {problem}; refusing to adopt it")
        return head

    async def put_segment(
        self, segment: SealedSegment, retain_until: datetime, *, retention_days: int, now: datetime
    ) -> tuple[str | None, datetime]:
        """Upload the body, then the manifest (its presence marks a complete upload); returns the
        body's version id and retain-until date. Neither key is ever given a second version: an object
        already there (a crashed or concurrent export of the same range; sealing is deterministic) is
        taken as it is if it holds the same bytes under COMPLIANCE retention of ``retention_days``, and
        refused (:class:`ArchiveRefused`) otherwise."""
        m = segment.manifest
        version = await self._put(m.body_key, segment.body, "application/x-ndjson", retain_until)
        if version is None:
            head = await self._existing(m.body_key, segment.body, retention_days, now)
            version, retain_until = head["VersionId"], head["RetainUntilDate"]
        key = manifest_key(self.prefix, m.first_sequence, m.last_sequence)
        if await self._put(key, segment.manifest_bytes, "application/json", retain_until) is None:
            await self._existing(key, segment.manifest_bytes, retention_days, now)
        log.info("audit segment archived", first=m.first_sequence, last=m.last_sequence, bucket=self.bucket)
        return version or None, retain_until

    async def find_manifest(self, first_sequence: int) -> tuple[str, SegmentManifest] | None:
        """A manifest already uploaded for a segment starting at ``first_sequence`` (an export that
        stopped between upload and bookkeeping), or ``None``."""
        import msgspec

        listing = await self._call(
            "list_objects_v2", Bucket=self.bucket, Prefix=f"{self.prefix}segments/{first_sequence:015d}-"
        )
        keys = sorted(o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".manifest.json"))
        if not keys:
            return None
        body = await self.get(keys[0])
        return keys[0], msgspec.json.decode(body, type=SegmentManifest)

    async def get(self, key: str, version_id: str | None = None) -> bytes:
        """The object's bytes: the latest version, or ``version_id``."""
        version = {"VersionId": version_id} if version_id else {}
        answer = await self._call("get_object", Bucket=self.bucket, Key=key, **version)
        return await asyncio.to_thread(answer["Body"].read)

    async def get_if_present(self, key: str, version_id: str | None = None) -> bytes | None:
        """The object's bytes, or ``None`` when the bucket has no object (or no such version) under ``key``."""
        try:
            return await self.get(key, version_id)
        except AuditArchiveError as exc:
            if _missing(exc):
                return None
            raise

    async def head_if_present(self, key: str, version_id: str | None = None) -> dict[str, Any] | None:
        """``VersionId``, ``LastModified`` and the Object Lock retention (``Mode``, ``RetainUntilDate``,
        ``None`` when unlocked) of the latest version or of ``version_id``; ``None`` when there is no such
        object or version (or the latest version is a delete marker)."""
        version = {"VersionId": version_id} if version_id else {}
        try:
            answer = await self._call("head_object", Bucket=self.bucket, Key=key, **version)
        except AuditArchiveError as exc:
            if _missing(exc):
                return None
            raise
        return {
            "VersionId": answer.get("VersionId"),
            "LastModified": answer.get("LastModified"),
            "Mode": answer.get("ObjectLockMode"),
            "RetainUntilDate": answer.get("ObjectLockRetainUntilDate"),
        }

    async def segment_keys(self) -> list[str]:
        """Every object key under ``<prefix>segments/`` (all pages of the listing)."""
        keys: list[str] = []
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{self.prefix}segments/"}
        while True:
            listing = await self._call("list_objects_v2", **request)
            keys += [o["Key"] for o in listing.get("Contents", [])]
            if not listing.get("IsTruncated"):
                return keys
            request["ContinuationToken"] = listing["NextContinuationToken"]

    async def versions(self, key: str) -> list[dict[str, Any]]:
        """Every version and delete marker of exactly ``key`` (``VersionId``, ``IsLatest``,
        ``DeleteMarker``), newest first, all pages."""
        found: list[dict[str, Any]] = []
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": key}
        while True:
            listing = await self._call("list_object_versions", **request)
            for kind, marker in (("Versions", False), ("DeleteMarkers", True)):
                found += [
                    {"VersionId": v.get("VersionId"), "IsLatest": v.get("IsLatest", False), "DeleteMarker": marker}
                    for v in listing.get(kind, [])
                    if v.get("Key") == key
                ]
            if not listing.get("IsTruncated"):
                return found
            request["KeyMarker"] = listing.get("NextKeyMarker")
            request["VersionIdMarker"] = listing.get("NextVersionIdMarker")


def lock_problem(head: dict[str, Any], archived: datetime, retention_days: int) -> str | None:
    """Why the version ``head`` describes (from :meth:`S3AuditArchive.head_if_present`) is not locked
    well enough for an object archived at ``archived`` (the earlier of that and its ``LastModified`` is
    taken), or ``None``: it must be under COMPLIANCE retention until ``retention_days`` after, less
    :data:`LOCK_SLACK`."""
    mode, until, modified = head["Mode"], head["RetainUntilDate"], head["LastModified"]
    if mode is None or until is None:
        return "is not locked (no Object Lock retention)"
    if mode != "COMPLIANCE":
        return f"is not locked in COMPLIANCE mode (mode {mode})"
    archived = min(archived, modified) if modified is not None else archived
    if until < archived + timedelta(days=retention_days) - LOCK_SLACK:
        return (
            f"retention too short: locked until {until.isoformat()}, less than {retention_days} days "
            f"after it was archived ({archived.isoformat()})"
        )
    return None


def _code(exc: AuditArchiveError) -> str | None:
    cause = exc.__cause__
    return getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None


def _missing(exc: AuditArchiveError) -> bool:
    return _code(exc) in _MISSING_CODES
