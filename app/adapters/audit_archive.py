"""Write-once storage of sealed audit segments: S3 (or any S3-compatible server) with Object Lock.

Every object is put with ``ObjectLockMode=COMPLIANCE`` and a retain-until date, so not even the
bucket's owner can delete or overwrite that version before the date. A bucket without Object Lock
would give no such guarantee, so :meth:`S3AuditArchive.check_object_lock` refuses it before anything
is uploaded. boto3 is synchronous: each call runs in a worker thread. Credentials come from boto3's
standard chain (environment, shared config, instance role) and are never passed through or logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import datetime
from typing import Any

import structlog

from app.domain.audit_segment import SealedSegment, SegmentManifest, manifest_key

__all__ = ["AuditArchiveError", "S3AuditArchive"]

log = structlog.get_logger(__name__)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})


class AuditArchiveError(Exception):
    """The archive cannot be used as configured (no Object Lock, unreachable, refused a write)."""


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
        )
        return answer.get("VersionId")

    async def put_segment(self, segment: SealedSegment, retain_until: datetime) -> str | None:
        """Upload the body, then the manifest (its presence marks a complete upload); returns the
        body's version id."""
        m = segment.manifest
        version = await self._put(m.body_key, segment.body, "application/x-ndjson", retain_until)
        await self._put(
            manifest_key(self.prefix, m.first_sequence, m.last_sequence),
            segment.manifest_bytes,
            "application/json",
            retain_until,
        )
        log.info("audit segment archived", first=m.first_sequence, last=m.last_sequence, bucket=self.bucket)
        return version

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

    def for_bucket(self, bucket: str) -> S3AuditArchive:
        """This archive's endpoint and credentials, for ``bucket`` (a segment recorded in another one)."""
        if bucket == self.bucket:
            return self
        return S3AuditArchive(bucket=bucket, region=self._region, endpoint_url=self._endpoint_url, prefix=self.prefix)

    async def retention(self, key: str) -> dict[str, Any]:
        """The object's Object Lock retention (``Mode``, ``RetainUntilDate``), from its headers (which
        every S3-compatible server returns; not all implement ``GetObjectRetention``)."""
        answer = await self._call("head_object", Bucket=self.bucket, Key=key)
        return {"Mode": answer.get("ObjectLockMode"), "RetainUntilDate": answer.get("ObjectLockRetainUntilDate")}


def _missing(exc: AuditArchiveError) -> bool:
    cause = exc.__cause__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    return code in _MISSING_CODES
