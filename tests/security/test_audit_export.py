"""Sealed audit segments in a real S3-compatible server (moto's, started on a free port) with Object
Lock: COMPLIANCE retention of at least a year, a locked version cannot be deleted, a bucket without
Object Lock and an over-short retention are refused, export resumes without re-sealing, and the
segments pin the chain against a wholesale rewrite."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import msgspec
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from app.adapters.audit_archive import ArchiveRefused, AuditArchiveError
from app.cli import ck
from app.db.audit_store import AuditStore
from app.domain.audit_chain import AuditActor
from app.domain.audit_segment import parse_segment_body, seal_segment
from app.services.audit import verify_chain
from app.services.audit_export import AuditExporter, AuditExportLoop, archive_from_settings
from app.services.container import Services, open_services
from app.settings import AuditSettings, Settings, SettingsError, _validate_audit, load_settings
from tests.conftest import make_settings
from tests.security.conftest import LOCKED, UNLOCKED
from tests.security.test_audit_log import forge_chain_from


def audit_settings(database_url: str, endpoint: str, bucket: str = LOCKED, **extra: Any) -> Settings:
    return make_settings(
        database_url,
        audit={"s3_endpoint_url": endpoint, "s3_bucket": bucket, "s3_prefix": "audit/", "segment_entries": 4, **extra},
    )


async def record(services: Services, count: int) -> None:
    for n in range(count):
        await services.audit.record(
            actor=AuditActor.system(),
            action="test.exported",
            subject_type="test",
            subject_id=uuid.uuid4(),
            change={"n": n},
        )


def exporter(services: Services) -> AuditExporter:
    settings = services.settings.audit
    return AuditExporter(services.db, services.audit.store, archive_from_settings(settings), settings, services.clock)


def test_segments_are_sealed_chained_and_locked_for_a_year(database_url: str, s3_endpoint: str) -> None:
    settings = audit_settings(database_url, s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    async def run() -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        async with open_services(settings, background=False) as services:
            await record(services, 10)
            full = await exporter(services).export()
            again = await exporter(services).export()
            tail = await exporter(services).export(partial=True)
            entries = [e async for batch in services.audit.store.stream(100) for e in batch]
            return full, again, tail, entries

    started = datetime.now(UTC)
    full, again, tail, entries = asyncio.run(run())
    assert [(s.first_sequence, s.last_sequence) for s in full] == [(1, 4), (5, 8)]
    assert again == []  # nothing new is full: nothing re-sealed
    assert [(s.first_sequence, s.last_sequence) for s in tail] == [(9, 10)]
    segments = [*full, *tail]
    for before, after in itertools.pairwise(segments):
        assert after.first_previous_hash == before.last_entry_hash

    archived: list[Any] = []
    for segment in segments:
        for key in (segment.object_key, segment.manifest_key):
            head = s3.head_object(Bucket=LOCKED, Key=key)  # moto's server lacks GetObjectRetention
            assert head["ObjectLockMode"] == "COMPLIANCE"
            assert head["ObjectLockRetainUntilDate"] >= started + timedelta(days=365)
        body = s3.get_object(Bucket=LOCKED, Key=segment.object_key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == segment.body_sha256
        manifest = msgspec.json.decode(s3.get_object(Bucket=LOCKED, Key=segment.manifest_key)["Body"].read())
        assert manifest["last_entry_hash"] == segment.last_entry_hash
        archived += parse_segment_body(body)
    assert archived == entries  # the archive holds the chain exactly, in order

    version = s3.head_object(Bucket=LOCKED, Key=segments[0].object_key)["VersionId"]
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=LOCKED, Key=segments[0].object_key, VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert s3.get_object(Bucket=LOCKED, Key=segments[0].object_key, VersionId=version)["Body"].read()


def test_a_bucket_without_object_lock_is_refused(database_url: str, s3_endpoint: str) -> None:
    settings = audit_settings(database_url, s3_endpoint, bucket=UNLOCKED)

    async def run() -> int:
        async with open_services(settings, background=False) as services:
            await record(services, 4)
            with pytest.raises(AuditArchiveError, match="Object Lock is not enabled"):
                await exporter(services).export(partial=True)
            return len(await services.audit.store.segments())

    assert asyncio.run(run()) == 0
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert s3.list_objects_v2(Bucket=UNLOCKED).get("KeyCount", 0) == 0
    env = {
        "CK_DATABASE__URL": database_url,
        "CK_AUDIT__S3_BUCKET": UNLOCKED,
        "CK_AUDIT__S3_ENDPOINT_URL": s3_endpoint,
        "CK_LOGGING__LEVEL": "WARNING",
    }
    result = CliRunner().invoke(ck, ["audit", "export", "--partial"], env=env)
    assert result.exit_code == 1 and "Object Lock is not enabled" in result.output, result.output


def test_cli_export_then_a_crash_before_bookkeeping_resumes_without_resealing(
    database_url: str, s3_endpoint: str
) -> None:
    settings = audit_settings(database_url, s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    async def upload_without_recording() -> str:
        async with open_services(settings, background=False) as services:
            await record(services, 6)
            entries = await services.audit.store.batch(0, 4)
            segment = seal_segment(entries, entries[0].previous_hash, 1, "audit/")
            archive = archive_from_settings(settings.audit)
            now = datetime.now(UTC)
            await archive.put_segment(segment, now + timedelta(days=400), retention_days=400, now=now)
            return segment.manifest.body_key

    key = asyncio.run(upload_without_recording())
    env = {
        "CK_DATABASE__URL": database_url,
        "CK_AUDIT__S3_BUCKET": LOCKED,
        "CK_AUDIT__S3_ENDPOINT_URL": s3_endpoint,
        "CK_AUDIT__SEGMENT_ENTRIES": "4",
        "CK_LOGGING__LEVEL": "WARNING",
    }
    result = CliRunner().invoke(ck, ["audit", "export"], env=env)
    assert result.exit_code == 0, result.output
    assert "exported 1 segments (4 entries)" in result.output
    versions = s3.list_object_versions(Bucket=LOCKED, Prefix=key)["Versions"]
    assert len(versions) == 1  # adopted, not uploaded a second time

    async def recorded() -> list[Any]:
        return await AuditStore().segments()

    async def check() -> list[Any]:
        async with open_services(settings, background=False):
            return await recorded()

    recorded_segments = asyncio.run(check())
    assert [(s.first_sequence, s.last_sequence) for s in recorded_segments] == [(1, 4)]
    assert recorded_segments[0].version_id == versions[0]["VersionId"]  # the adopted version is pinned
    assert recorded_segments[0].retain_until == versions_retention(s3, key)


def versions_retention(s3: Any, key: str) -> datetime:
    return s3.head_object(Bucket=LOCKED, Key=key)["ObjectLockRetainUntilDate"]


@pytest.mark.parametrize("body_days", [None, 30])
def test_an_unrecorded_upload_without_enough_retention_is_refused_not_adopted(
    database_url: str, s3_endpoint: str, body_days: int | None
) -> None:
    """A manifest and body found for the next range, the body unlocked (no retain-until date at all)
    or locked for 30 days only: export raises ArchiveRefused each round, records nothing, and the
    background loop keeps running (one error logged per round)."""
    settings = audit_settings(database_url, s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    async def run() -> tuple[str, str, int]:
        async with open_services(settings, background=False) as services:
            await record(services, 4)
            entries = await services.audit.store.batch(0, 4)
            segment = seal_segment(entries, entries[0].previous_hash, 1, "audit/")
            m = segment.manifest
            _put(s3, m.body_key, segment.body, body_days)
            _put(s3, m.body_key.replace(".jsonl", ".manifest.json"), segment.manifest_bytes, 400)
            with pytest.raises(ArchiveRefused) as first:
                await exporter(services).export()
            with pytest.raises(ArchiveRefused) as second:
                await exporter(services).export()
            return str(first.value), str(second.value), len(await services.audit.store.segments())

    first, second, recorded = asyncio.run(run())
    assert first == second and recorded == 0
    expected = "is not locked (no Object Lock retention)" if body_days is None else "retention too short"
    assert expected in first and "refusing to adopt it" in first and ".jsonl (version " in first


def _put(s3: Any, key: str, body: bytes, days: int | None) -> str:
    lock: dict[str, Any] = {}
    if days is not None:
        lock = {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=days)}
    md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
    return s3.put_object(Bucket=LOCKED, Key=key, Body=body, ContentMD5=md5, **lock)["VersionId"]


def test_concurrent_exports_upload_each_segment_once(database_url: str, s3_endpoint: str) -> None:
    """Two exporters (separate stores, as in two instances) export at the same time, twice over: each
    segment is recorded once, each key has one version, and neither raises. On PostgreSQL the
    advisory lock makes the loser skip its round; where it cannot reach (two SQLite processes, modelled
    by two stores) the conditional put and the re-check before recording do."""
    settings = audit_settings(database_url, s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    def second(services: Services) -> AuditExporter:
        audit = services.settings.audit
        return AuditExporter(services.db, AuditStore(), archive_from_settings(audit), audit, services.clock)

    async def run() -> tuple[list[Any], list[Any], list[Any]]:
        async with open_services(settings, background=False) as services:
            await record(services, 8)
            a, b = await asyncio.gather(exporter(services).export(), second(services).export())
            await record(services, 4)
            c, d = await asyncio.gather(second(services).export(), exporter(services).export())
            return [*a, *b, *c, *d], await services.audit.store.segments(), [a, b, c, d]

    exported, recorded, rounds = asyncio.run(run())
    assert sorted((s.first_sequence, s.last_sequence) for s in exported) == [(1, 4), (5, 8), (9, 12)]
    assert [(s.first_sequence, s.last_sequence) for s in recorded] == [(1, 4), (5, 8), (9, 12)]
    if not database_url.startswith("sqlite"):
        assert [] in rounds[:2] and [] in rounds[2:]  # the loser skipped its round entirely
    listing = s3.list_object_versions(Bucket=LOCKED, Prefix="audit/")
    keys = [v["Key"] for v in listing.get("Versions", [])]
    assert len(keys) == 6 and len(set(keys)) == 6 and not listing.get("DeleteMarkers")
    assert {s.version_id for s in recorded} == {
        v["VersionId"] for v in listing["Versions"] if v["Key"].endswith(".jsonl")
    }


def test_an_existing_key_with_other_bytes_is_refused_not_overwritten(database_url: str, s3_endpoint: str) -> None:
    settings = audit_settings(database_url, s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    async def run() -> tuple[str, int]:
        async with open_services(settings, background=False) as services:
            await record(services, 4)
            _put(s3, "audit/segments/000000000000001-000000000000004.jsonl", b"planted\n", 400)
            with pytest.raises(ArchiveRefused) as refused:
                await exporter(services).export()
            return str(refused.value), len(await services.audit.store.segments())

    message, recorded = asyncio.run(run())
    assert "already holds different bytes" in message and recorded == 0
    listing = s3.list_object_versions(Bucket=LOCKED, Prefix="audit/")
    assert [v["Key"] for v in listing["Versions"]] == ["audit/segments/000000000000001-000000000000004.jsonl"]


def test_sealed_segments_catch_a_rewritten_chain(database_url: str, s3_endpoint: str) -> None:
    """Someone who can drop the triggers rewrites entry 2 and recomputes every later hash: the chain
    alone verifies again, but it no longer ends where the sealed segment says it did."""
    settings = audit_settings(database_url, s3_endpoint)

    async def run() -> Any:
        async with open_services(settings, background=False) as services:
            await record(services, 4)
            await exporter(services).export()
            entries = await forge_chain_from(services, 1)
            return await verify_chain(services.audit.store, 2), entries

    report, entries = asyncio.run(run())
    assert report.broken is not None
    assert (report.broken.sequence, report.broken.id) == (4, entries[3].id)
    assert "sealed segment" in report.broken.reason


def test_retention_under_a_year_is_refused_at_start_up() -> None:
    with pytest.raises(SettingsError, match="retention_days must be at least 365"):
        load_settings(environ={"CK_AUDIT__RETENTION_DAYS": "364"})
    assert load_settings(environ={"CK_AUDIT__RETENTION_DAYS": "365"}).audit.retention_days == 365
    production = msgspec.convert({"server": {"environment": "production"}}, Settings)
    with pytest.raises(SettingsError, match="audit.digest_key still has the development default"):
        _validate_audit(production)
    _validate_audit(msgspec.structs.replace(production, audit=AuditSettings(digest_key="d" * 40)))


def test_the_background_loop_exports_full_segments(database_url: str, s3_endpoint: str) -> None:
    settings = audit_settings(database_url, s3_endpoint, export_interval_seconds=1)

    async def run() -> list[Any]:
        async with open_services(settings, background=False) as services:
            await record(services, 5)
            async with AuditExportLoop(exporter(services), 0.05):
                for _ in range(100):
                    segments = await services.audit.store.segments()
                    if segments:
                        break
                    await asyncio.sleep(0.05)
            return segments

    assert [(s.first_sequence, s.last_sequence) for s in asyncio.run(run())] == [(1, 4)]
