"""``litestar ck audit verify --against-archive`` against a real S3-compatible server (moto's) with
Object Lock: a clean archive verifies (an unrecorded upload is only info), database rows rewritten after
export are named by segment and sequence, objects missing from the bucket fail, a recorded object not
under COMPLIANCE retention of audit.retention_days or with a newer version put over it fails, and the
exporter refuses to seal a range that does not link to the previous sealed segment."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from app.cli import ck
from app.db.audit_store import SegmentRecord
from app.domain.audit_segment import SealedSegment, SegmentRefused, manifest_key, seal_segment
from app.services.audit_archive_check import ArchiveMismatch, ArchiveReport, check_archive
from app.services.audit_export import archive_from_settings
from app.services.container import Services, open_services
from app.settings import Settings
from tests.security.conftest import LOCKED
from tests.security.test_audit_export import audit_settings, exporter, record
from tests.security.test_audit_log import drop_append_only_triggers, forge_chain_from


def _env(settings: Settings) -> dict[str, str]:
    audit = settings.audit
    return {
        "CK_DATABASE__URL": settings.database.url,
        "CK_DATABASE__AUTO_MIGRATE": "false",
        "CK_AUDIT__S3_BUCKET": audit.s3_bucket,
        "CK_AUDIT__S3_ENDPOINT_URL": audit.s3_endpoint_url or "",
        "CK_AUDIT__S3_PREFIX": audit.s3_prefix,
        "CK_AUDIT__SEGMENT_ENTRIES": str(audit.segment_entries),
        "CK_LOGGING__LEVEL": "WARNING",
    }


def _verify_cli(settings: Settings) -> Any:
    return CliRunner().invoke(ck, ["audit", "verify", "--against-archive", "--batch-size", "3"], env=_env(settings))


async def _check(services: Services) -> ArchiveReport:
    archive = archive_from_settings(services.settings.audit)
    return await check_archive(services.audit.store, archive, 3, retention_days=services.settings.audit.retention_days)


async def _seal_next(services: Services, count: int) -> SealedSegment:
    """The next ``count`` entries after the last recorded segment, sealed but not uploaded."""
    last = await services.audit.store.last_segment()
    assert last is not None
    entries = await services.audit.store.batch(last.last_sequence, count)
    return seal_segment(entries, last.last_entry_hash, last.last_sequence + 1, "audit/")


async def _record_only(
    services: Services, segment: SealedSegment, version_id: str | None = None, bucket: str = LOCKED
) -> None:
    """Record a segment in ``audit_segments`` as the exporter would, whatever is in the bucket."""
    m = segment.manifest
    now = datetime.now(UTC)
    async with services.db.transaction():
        await services.audit.store.record_segment(
            SegmentRecord(
                id=uuid.uuid4(),
                first_sequence=m.first_sequence,
                last_sequence=m.last_sequence,
                entry_count=m.entry_count,
                first_previous_hash=m.first_previous_hash,
                last_entry_hash=m.last_entry_hash,
                body_sha256=m.body_sha256,
                bucket=bucket,
                object_key=m.body_key,
                manifest_key=manifest_key("audit/", m.first_sequence, m.last_sequence),
                version_id=version_id,
                retain_until=now + timedelta(days=400),
                sealed_at=now,
            )
        )


def test_a_clean_archive_verifies_and_an_unrecorded_upload_is_only_info(database_url: str, s3_endpoint: str) -> None:
    settings = audit_settings(database_url, s3_endpoint)

    async def run() -> tuple[ArchiveReport, str]:
        async with open_services(settings, background=False) as services:
            await record(services, 10)
            await exporter(services).export()  # 1-4 and 5-8
            orphan = await _seal_next(services, 2)  # 9-10 uploaded, then "crashed" before bookkeeping
            now = datetime.now(UTC)
            await archive_from_settings(settings.audit).put_segment(
                orphan, now + timedelta(days=400), retention_days=400, now=now
            )
            return await _check(services), orphan.manifest.body_key

    report, orphan_key = asyncio.run(run())
    assert (report.segments, report.entries, report.mismatches) == (2, 8, [])
    assert report.unrecorded == [
        "audit/segments/000000000000009-000000000000010.jsonl",
        "audit/segments/000000000000009-000000000000010.manifest.json",
    ]
    result = _verify_cli(settings)
    assert result.exit_code == 0, result.output
    assert "chain intact, 10 entries" in result.output
    assert "segment 1-4" in result.output and "segment 5-8" in result.output and "ok (4 entries)" in result.output
    assert f"info: s3://{LOCKED}/{orphan_key} is in the bucket but not recorded" in result.output
    assert "archive agrees: 2 segments, 8 entries" in result.output


def test_database_rows_rewritten_after_export_are_named_by_sequence(database_url: str, s3_endpoint: str) -> None:
    settings = audit_settings(database_url, s3_endpoint)

    async def run() -> tuple[ArchiveReport, list[Any]]:
        async with open_services(settings, background=False) as services:
            await record(services, 8)
            await exporter(services).export()
            await drop_append_only_triggers(services)
            await services.db.engine.run_ddl("UPDATE audit_log SET subject_type = 'attempt' WHERE sequence = 6")
            return await _check(services), await services.audit.store.batch(0, 10)

    report, entries = asyncio.run(run())
    assert report.mismatches == [
        ArchiveMismatch(5, 8, 6, "database row differs from the archived entry in: subject_type")
    ]
    assert report.entries == 4 and entries[5].subject_type == "attempt"
    result = _verify_cli(settings)
    assert result.exit_code == 1, result.output
    assert "segment 1-4 (s3://" in result.output and "ok (4 entries)" in result.output
    assert "MISMATCH at sequence 6: database row differs from the archived entry in: subject_type" in result.output
    assert "archive mismatch in segment 5-8 at sequence 6" in result.output
    assert "1 of 2 segments disagree" in result.output


def test_a_chain_rewritten_end_to_end_still_disagrees_with_the_archive(database_url: str, s3_endpoint: str) -> None:
    """Every hash recomputed after the change: the database chain is self-consistent again, the
    archived bytes are not what the database now holds."""
    settings = audit_settings(database_url, s3_endpoint)

    async def run() -> ArchiveReport:
        async with open_services(settings, background=False) as services:
            await record(services, 8)
            await exporter(services).export()
            await forge_chain_from(services, 2)
            return await _check(services)

    report = asyncio.run(run())
    assert [(m.first_sequence, m.sequence) for m in report.mismatches] == [(1, 3), (5, 5)]
    assert report.mismatches[0].problem == "database row differs from the archived entry in: action, entry_hash"
    assert "previous_hash" in report.mismatches[1].problem


def _put_locked(s3: Any, key: str, body: bytes, days: int | None = 400, bucket: str = LOCKED) -> str:
    """Put ``body`` under ``key`` (under COMPLIANCE retention of ``days``, or unlocked for ``None``);
    returns the new version's id."""
    lock: dict[str, Any] = {}
    if days is not None:
        lock = {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=days)}
    answer = s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentMD5=base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
        **lock,
    )
    return answer["VersionId"]


def test_objects_missing_from_the_bucket_are_caught(database_url: str, s3_endpoint: str) -> None:
    """5-8 recorded with nothing uploaded, 9-12 recorded with its manifest but not its body (as if
    written to another bucket or prefix): both fail, 1-4 still agrees."""
    settings = audit_settings(database_url, s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    async def run() -> ArchiveReport:
        async with open_services(settings, background=False) as services:
            await record(services, 4)
            await exporter(services).export()  # 1-4, archived
            await record(services, 8)
            nothing = await _seal_next(services, 4)
            await _record_only(services, nothing)
            no_body = await _seal_next(services, 4)
            m = no_body.manifest
            _put_locked(s3, manifest_key("audit/", m.first_sequence, m.last_sequence), no_body.manifest_bytes)
            await _record_only(services, no_body)
            return await _check(services)

    report = asyncio.run(run())
    assert report.entries == 4 and report.unrecorded == []
    assert report.mismatches == [
        ArchiveMismatch(
            5,
            8,
            None,
            f"manifest s3://{LOCKED}/audit/segments/000000000000005-000000000000008.manifest.json "
            "is missing from the bucket",
        ),
        ArchiveMismatch(
            9,
            12,
            None,
            f"body s3://{LOCKED}/audit/segments/000000000000009-000000000000012.jsonl is missing from the bucket",
        ),
    ]
    result = _verify_cli(settings)
    assert result.exit_code == 1, result.output
    assert "chain intact, 12 entries" in result.output  # the database alone cannot tell
    assert "archive mismatch in segment 5-8: manifest s3://" in result.output
    assert "2 of 3 segments disagree" in result.output
    assert "segment 9-12 (s3://" in result.output and "body s3://" in result.output


def test_unlocked_short_retention_and_overwritten_objects_are_caught(database_url: str, s3_endpoint: str) -> None:
    """1-4 exported and intact; 5-8 exported, then a newer version (same bytes, unlocked: moto allows it
    over a locked key) put over its body; 9-12 put with no Object Lock at all, 13-16 with its body locked
    for 30 days only, both recorded (with the body's version) as if exported."""
    settings = audit_settings(database_url, s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    async def run() -> tuple[ArchiveReport, list[SegmentRecord], str]:
        async with open_services(settings, background=False) as services:
            await record(services, 8)
            exported = await exporter(services).export()  # 1-4 and 5-8
            body_key = exported[1].object_key
            newer = _put_locked(s3, body_key, s3.get_object(Bucket=LOCKED, Key=body_key)["Body"].read(), None)
            await record(services, 8)
            for manifest_days, body_days in ((None, None), (400, 30)):
                segment = await _seal_next(services, 4)
                m = segment.manifest
                key = manifest_key("audit/", m.first_sequence, m.last_sequence)
                _put_locked(s3, key, segment.manifest_bytes, manifest_days)
                await _record_only(services, segment, _put_locked(s3, m.body_key, segment.body, body_days))
            return await _check(services), await services.audit.store.segments(), newer

    report, segments, newer = asyncio.run(run())
    assert report.entries == 4 and report.unrecorded == []
    body = {s.first_sequence: (f"s3://{LOCKED}/{s.object_key}", s.version_id) for s in segments}
    manifest = f"s3://{LOCKED}/{segments[2].manifest_key}"
    assert all(version for _, version in body.values())
    assert [(m.first_sequence, m.last_sequence, m.sequence) for m in report.mismatches] == [
        (5, 8, None),
        (9, 12, None),
        (13, 16, None),
    ]
    url, version = body[5]
    assert report.mismatches[0].problem == (
        f"body {url} was overwritten: its latest version is version {newer}, not the recorded {version}"
    )
    assert report.mismatches[1].problem.startswith(f"manifest {manifest} (version ")  # checked before the body
    assert report.mismatches[1].problem.endswith(") is not locked (no Object Lock retention)")
    url, version = body[13]
    assert report.mismatches[2].problem.startswith(f"body {url} (version {version}) retention too short: locked until ")
    assert "less than 400 days after it was archived" in report.mismatches[2].problem

    result = _verify_cli(settings)
    assert result.exit_code == 1, result.output
    assert "segment 1-4 (s3://" in result.output and "ok (4 entries)" in result.output
    assert f"archive mismatch in segment 5-8: body {body[5][0]} was overwritten" in result.output
    assert "segment 9-12 (s3://" in result.output and "is not locked (no Object Lock retention)" in result.output
    assert "segment 13-16 (s3://" in result.output and "retention too short" in result.output
    assert "3 of 4 segments disagree" in result.output


def test_the_exporter_refuses_a_range_that_does_not_link_to_the_sealed_segment(
    database_url: str, s3_endpoint: str
) -> None:
    settings = audit_settings(database_url, s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    async def run() -> tuple[SegmentRefused, SegmentRefused, int]:
        async with open_services(settings, background=False) as services:
            await record(services, 4)
            await exporter(services).export()
            await record(services, 4)
            await drop_append_only_triggers(services)
            await services.db.engine.run_ddl("UPDATE audit_log SET subject_type = 'attempt' WHERE sequence = 6")
            with pytest.raises(SegmentRefused) as inside:
                await exporter(services).export()
            # The first unsealed entry no longer names the sealed segment's last hash.
            await services.db.engine.run_ddl(f"UPDATE audit_log SET previous_hash = '{'f' * 64}' WHERE sequence = 5")  # noqa: S608
            with pytest.raises(SegmentRefused) as unlinked:
                await exporter(services).export(partial=True)
            return inside.value, unlinked.value, len(await services.audit.store.segments())

    inside, unlinked, segments = asyncio.run(run())
    assert inside.broken.sequence == 6 and "entry_hash" in inside.broken.reason
    assert unlinked.broken.sequence == 5 and "previous_hash" in unlinked.broken.reason
    assert segments == 1
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=LOCKED, Prefix="audit/").get("Contents", [])]
    assert keys == [
        "audit/segments/000000000000001-000000000000004.jsonl",
        "audit/segments/000000000000001-000000000000004.manifest.json",
    ]
    result = CliRunner().invoke(ck, ["audit", "export", "--partial"], env=_env(settings))
    assert result.exit_code == 1 and "chain broken, nothing sealed: entry 5" in result.output, result.output


def test_a_segment_recorded_in_another_bucket_is_a_mismatch_and_not_followed(
    database_url: str, s3_endpoint: str
) -> None:
    """5-8 uploaded, intact and locked, to a bucket other than audit.s3_bucket and recorded as being
    there (someone who can write audit_segments points it at a bucket they control): a mismatch, and
    that bucket is never read."""
    settings = audit_settings(database_url, s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="ck-audit-elsewhere", ObjectLockEnabledForBucket=True)

    async def run() -> ArchiveReport:
        async with open_services(settings, background=False) as services:
            await record(services, 8)
            await exporter(services).export()  # 1-4 and 5-8
            await record(services, 4)
            segment = await _seal_next(services, 4)
            m = segment.manifest
            _put_locked(
                s3,
                manifest_key("audit/", m.first_sequence, m.last_sequence),
                segment.manifest_bytes,
                400,
                "ck-audit-elsewhere",
            )
            version = _put_locked(s3, m.body_key, segment.body, 400, "ck-audit-elsewhere")
            await _record_only(services, segment, version, "ck-audit-elsewhere")
            return await _check(services)

    report = asyncio.run(run())
    assert report.entries == 8
    assert report.mismatches == [
        ArchiveMismatch(
            9,
            12,
            None,
            f"recorded in bucket 'ck-audit-elsewhere', not the configured audit.s3_bucket '{LOCKED}' (not followed)",
        )
    ]
    result = _verify_cli(settings)
    assert result.exit_code == 1, result.output
    assert "archive mismatch in segment 9-12: recorded in bucket 'ck-audit-elsewhere'" in result.output


def test_a_key_with_a_second_version_or_a_delete_marker_is_a_mismatch(database_url: str, s3_endpoint: str) -> None:
    """1-4 exported; a delete marker then the same manifest bytes again put over 1-4's manifest (the
    latest version is locked and intact). 5-8: an older version of the body below the recorded one.
    Both are mismatches although every byte read agrees."""
    settings = audit_settings(database_url, s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    async def run() -> tuple[ArchiveReport, list[SegmentRecord]]:
        async with open_services(settings, background=False) as services:
            await record(services, 4)
            (first,) = await exporter(services).export()
            manifest = s3.get_object(Bucket=LOCKED, Key=first.manifest_key)["Body"].read()
            s3.delete_object(Bucket=LOCKED, Key=first.manifest_key)
            _put_locked(s3, first.manifest_key, manifest)
            await record(services, 4)
            segment = await _seal_next(services, 4)
            m = segment.manifest
            _put_locked(s3, manifest_key("audit/", m.first_sequence, m.last_sequence), segment.manifest_bytes)
            _put_locked(s3, m.body_key, segment.body)
            await _record_only(services, segment, _put_locked(s3, m.body_key, segment.body))
            return await _check(services), await services.audit.store.segments()

    report, segments = asyncio.run(run())
    assert report.entries == 0
    assert report.mismatches == [
        ArchiveMismatch(
            1,
            4,
            None,
            f"manifest s3://{LOCKED}/{segments[0].manifest_key} has 3 versions (1 of them delete markers); "
            "an exported key has exactly one",
        ),
        ArchiveMismatch(
            5,
            8,
            None,
            f"body s3://{LOCKED}/{segments[1].object_key} has 2 versions; an exported key has exactly one",
        ),
    ]
