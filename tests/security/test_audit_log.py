"""The audit log in the database, on SQLite and PostgreSQL: append-only at the database level, one
unforked chain under concurrent writers, atomic with the audited change, no PII stored, and tampering
(by someone able to drop the triggers) found by ``litestar ck audit verify`` at the right entry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import pytest_asyncio
import structlog
from click.testing import CliRunner

from app.cli import ck
from app.db.audit_store import SegmentRecord
from app.domain.audit_chain import AuditActor, AuditEntry, compute_entry_hash
from app.services.audit import verify_chain
from app.services.container import Services, open_services
from app.settings import Settings
from tests.conftest import make_settings

SYSTEM = AuditActor.system()


@pytest_asyncio.fixture
async def services(database_url: str) -> AsyncIterator[Services]:
    async with open_services(make_settings(database_url), background=False) as opened:
        yield opened


async def record_some(services: Services, count: int) -> list[Any]:
    return [
        await services.audit.record(
            actor=AuditActor(kind="user", id=uuid.uuid4()),
            action="profile.updated",
            subject_type="profile",
            subject_id=uuid.uuid4(),
            change={"n": n},
        )
        for n in range(count)
    ]


async def drop_append_only_triggers(services: Services) -> None:
    """What a superuser (not the app) could do: the triggers go, so rows can be rewritten."""
    if services.db.is_sqlite:
        for op in ("update", "delete"):
            await services.db.engine.run_ddl(f'DROP TRIGGER "audit_log_no_{op}"')
    else:
        await services.db.engine.run_ddl('DROP TRIGGER "audit_log_append_only" ON "audit_log"')


async def forge_chain_from(services: Services, index: int) -> list[AuditEntry]:
    """Drop the triggers and rewrite every entry from ``index`` (0-based) on, each hash recomputed so the
    chain verifies on its own again; returns the entries as they were."""
    await drop_append_only_triggers(services)
    entries = await services.audit.store.batch(0, 10)
    previous = entries[index - 1].entry_hash
    for entry in entries[index:]:
        forged = msgspec.structs.replace(entry, action="test.forged", previous_hash=previous)
        forged = msgspec.structs.replace(forged, entry_hash=compute_entry_hash(forged))
        # Values are hex digests and an int computed here, not input.
        await services.db.engine.run_ddl(
            f"UPDATE audit_log SET action = 'test.forged', previous_hash = '{forged.previous_hash}', "  # noqa: S608
            f"entry_hash = '{forged.entry_hash}' WHERE sequence = {forged.sequence}"
        )
        previous = forged.entry_hash
    return entries


@pytest.mark.asyncio
async def test_update_delete_and_truncate_are_refused_by_the_database(services: Services) -> None:
    entries = await record_some(services, 3)
    now = datetime.now(UTC)
    async with services.db.transaction():
        await services.audit.store.record_segment(
            SegmentRecord(
                id=uuid.uuid4(),
                first_sequence=1,
                last_sequence=3,
                entry_count=3,
                first_previous_hash=entries[0].previous_hash,
                last_entry_hash=entries[2].entry_hash,
                body_sha256="0" * 64,
                bucket="b",
                object_key="k",
                manifest_key="m",
                version_id=None,
                retain_until=now + timedelta(days=400),
                sealed_at=now,
            )
        )
    statements = [
        "UPDATE audit_log SET action = 'profile.deleted' WHERE sequence = 2",
        "DELETE FROM audit_log WHERE sequence = 3",
        "DELETE FROM audit_log",
        "UPDATE audit_segments SET bucket = 'elsewhere'",
        "DELETE FROM audit_segments",
    ]
    if not services.db.is_sqlite:
        statements += ["TRUNCATE audit_log", "TRUNCATE audit_segments"]
    for statement in statements:
        with pytest.raises(Exception, match="append-only"):
            async with services.db.transaction():
                await services.db.engine.run_ddl(statement)
    report = await verify_chain(services.audit.store, 100)
    assert report.broken is None and report.entries == 3 and report.segments == 1
    rows = await services.db.engine.run_ddl("SELECT action FROM audit_log WHERE sequence = 2")
    assert [dict(row) for row in rows] == [{"action": "profile.updated"}] and entries[1].action == "profile.updated"


@pytest.mark.asyncio
async def test_concurrent_records_leave_one_unforked_chain(services: Services) -> None:
    async def one(n: int) -> Any:
        return await services.audit.record(
            actor=SYSTEM, action="test.concurrent", subject_type="test", subject_id=None, change={"n": n}
        )

    entries = await asyncio.gather(*(one(n) for n in range(50)))
    assert sorted(e.sequence for e in entries) == list(range(1, 51))
    assert len({e.previous_hash for e in entries}) == 50  # no two entries link to the same predecessor
    report = await verify_chain(services.audit.store, 7)
    assert report.broken is None and report.entries == 50


@pytest.mark.asyncio
async def test_entry_commits_or_rolls_back_with_the_change(services: Services) -> None:
    await record_some(services, 1)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with services.db.transaction():
            await services.audit.record(actor=SYSTEM, action="test.rolled_back", subject_type="test", subject_id=None)
            raise Boom
    assert await services.audit.store.count() == 1
    with pytest.raises(TypeError):  # an unencodable change writes nothing at all
        await services.audit.record(
            actor=SYSTEM, action="test.bad", subject_type="test", subject_id=None, change={"x": object()}
        )
    with pytest.raises(ValueError):
        await services.audit.record(actor=SYSTEM, action="DROP TABLE x;", subject_type="test", subject_id=None)
    next_entry = (await record_some(services, 1))[0]
    assert next_entry.sequence == 2
    assert (await verify_chain(services.audit.store, 10)).broken is None


@pytest.mark.asyncio
async def test_request_context_is_recorded_and_pii_is_not(services: Services) -> None:
    secret_bio = "I was born in 1990 in Lyon and I am afraid of dogs"
    with structlog.contextvars.bound_contextvars(request_id="req-abc", trace_id="4bf92f3577b34da6a3ce929d0e0e4736"):
        entry = await services.audit.record(
            actor=SYSTEM,
            action="profile.updated",
            subject_type="profile",
            subject_id=uuid.uuid4(),
            change={"bio": secret_bio},
        )
    assert (entry.request_id, entry.trace_id) == ("req-abc", "4bf92f3577b34da6a3ce929d0e0e4736")
    rows = await services.db.engine.run_ddl("SELECT * FROM audit_log")
    stored = " ".join(str(v) for row in rows for v in row.values())
    assert "req-abc" in stored
    for fragment in ("1990", "Lyon", "dogs", "bio"):
        assert fragment not in stored


def _cli_env(settings: Settings) -> dict[str, str]:
    return {
        "CK_DATABASE__URL": settings.database.url,
        "CK_DATABASE__AUTO_MIGRATE": "false",
        "CK_LOGGING__LEVEL": "WARNING",
    }


def test_cli_verify_names_the_first_tampered_entry(database_url: str) -> None:
    settings = make_settings(database_url)

    async def setup() -> list[Any]:
        async with open_services(settings, background=False) as services:
            return await record_some(services, 5)

    async def tamper() -> None:
        async with open_services(settings, background=False) as services:
            await drop_append_only_triggers(services)
            await services.db.engine.run_ddl("UPDATE audit_log SET subject_type = 'attempt' WHERE sequence = 3")

    entries = asyncio.run(setup())
    runner = CliRunner()
    intact = runner.invoke(ck, ["audit", "verify", "--batch-size", "2"], env=_cli_env(settings))
    assert intact.exit_code == 0, intact.output
    assert "chain intact, 5 entries" in intact.output
    asyncio.run(tamper())
    broken = runner.invoke(ck, ["audit", "verify", "--batch-size", "2"], env=_cli_env(settings))
    assert broken.exit_code == 1, broken.output
    assert "sequence 3" in broken.output and str(entries[2].id) in broken.output
    status = runner.invoke(ck, ["audit", "status"], env=_cli_env(settings))
    assert status.exit_code == 0 and "entries: 5" in status.output, status.output


def test_cli_verify_finds_a_deleted_entry(database_url: str) -> None:
    settings = make_settings(database_url)

    async def run() -> list[Any]:
        async with open_services(settings, background=False) as services:
            entries = await record_some(services, 4)
            await drop_append_only_triggers(services)
            await services.db.engine.run_ddl("DELETE FROM audit_log WHERE sequence = 2")
            return entries

    entries = asyncio.run(run())
    broken = CliRunner().invoke(ck, ["audit", "verify"], env=_cli_env(settings))
    assert broken.exit_code == 1 and "sequence 3" in broken.output and str(entries[2].id) in broken.output


def test_every_audit_command_has_help() -> None:
    runner = CliRunner()
    for command in ("verify", "export", "status"):
        result = runner.invoke(ck, ["audit", command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command
