"""``litestar ck audit ...``: verify the audit chain, export sealed segments, show where things stand."""

from __future__ import annotations

import sys
from typing import Any

import click

__all__ = ["audit"]


@click.group(name="audit", help="The tamper-evident audit log: verify, export sealed segments, status.")
def audit() -> None:
    pass


@audit.command(
    help="Check the whole hash chain (and the sealed segments' hashes) in batches. Exit 0 with "
    "'chain intact, N entries', or 1 naming the first broken entry's sequence and id. With "
    "--against-archive, also re-read every sealed segment from the bucket and check it."
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Entries per query (default: audit.verify_batch_size).",
)
@click.option(
    "--against-archive",
    is_flag=True,
    help="Also download each recorded segment (body + manifest) and check its SHA-256, its chain, its "
    "link to the previous segment and that its entries equal the database rows byte for byte. Objects "
    "missing from the bucket fail; objects in it that no segment record names are shown as info.",
)
def verify(batch_size: int | None, against_archive: bool) -> None:
    from app.adapters.audit_archive import AuditArchiveError
    from app.cli import _run
    from app.services.audit import verify_chain
    from app.services.audit_archive_check import SegmentCheck, check_archive
    from app.services.audit_export import archive_from_settings

    def shown(check: SegmentCheck) -> None:
        r, m = check.record, check.mismatch
        if m is None:
            outcome = f"ok ({r.entry_count} entries)"
        else:
            outcome = "MISMATCH" + (f" at sequence {m.sequence}" if m.sequence is not None else "") + f": {m.problem}"
        click.echo(
            f"segment {r.first_sequence}-{r.last_sequence} (s3://{r.bucket}/{r.object_key}): {outcome}", err=True
        )

    async def work(services: Any) -> Any:
        store = services.audit.store
        total = await store.count()
        size = batch_size or services.settings.audit.verify_batch_size
        with click.progressbar(length=total, label="verifying", file=sys.stderr) as bar:
            chain = await verify_chain(store, size, bar.update)
        if not against_archive:
            return chain, None
        archive = archive_from_settings(services.settings.audit)
        return chain, await check_archive(
            store, archive, size, shown, retention_days=services.settings.audit.retention_days
        )

    try:
        report, archived = _run(work)
    except AuditArchiveError as exc:
        raise click.ClickException(f"archive not readable: {exc}") from None
    failures: list[str] = []
    if report.broken is not None:
        b = report.broken
        failures.append(
            f"chain broken at sequence {b.sequence} (entry {b.id if b.id else 'missing'}): {b.reason}; "
            f"{report.entries} entries before it verified"
        )
    else:
        click.echo(f"chain intact, {report.entries} entries ({report.segments} sealed segments agree)")
    if archived is not None:
        for key in archived.unrecorded:
            click.echo(f"info: s3://{archived.bucket}/{key} is in the bucket but not recorded in audit_segments")
        if archived.first is not None:
            failures.append(
                f"archive mismatch in {archived.first}; {len(archived.mismatches)} of {archived.segments} "
                "segments disagree"
            )
        else:
            click.echo(f"archive agrees: {archived.segments} segments, {archived.entries} entries")
    if failures:
        raise click.ClickException("\n".join(failures))


@audit.command(
    help="Seal full segments of audit.segment_entries entries and upload them to the Object Lock bucket "
    "(COMPLIANCE retention of audit.retention_days). Resumable; refuses a bucket without Object Lock."
)
@click.option("--partial", is_flag=True, help="Also seal the entries after the last full segment.")
def export(partial: bool) -> None:
    from app.adapters.audit_archive import AuditArchiveError
    from app.cli import _run
    from app.domain.audit_segment import SegmentRefused
    from app.services.audit_export import AuditExporter, archive_from_settings

    def shown(record: Any) -> None:
        click.echo(
            f"sealed {record.first_sequence}-{record.last_sequence} -> s3://{record.bucket}/{record.object_key}",
            err=True,
        )

    async def work(services: Any) -> list[Any]:
        settings = services.settings.audit
        exporter = AuditExporter(
            services.db, services.audit.store, archive_from_settings(settings), settings, services.clock
        )
        return await exporter.export(partial=partial, progress=shown)

    try:
        sealed = _run(work)
    except AuditArchiveError as exc:
        raise click.ClickException(str(exc)) from None
    except SegmentRefused as exc:
        raise click.ClickException(f"chain broken, nothing sealed: {exc}") from None
    click.echo(f"exported {len(sealed)} segments ({sum(r.entry_count for r in sealed)} entries)")


@audit.command(help="Entries, the chain head, sealed segments and what is still unsealed.")
def status() -> None:
    from app.cli import _run

    async def work(services: Any) -> dict[str, Any]:
        store = services.audit.store
        last_sequence, head = await store.tail()
        last = await store.last_segment()
        sealed = last.last_sequence if last else 0
        return {
            "entries": await store.count(),
            "last sequence": last_sequence,
            "head hash": head,
            "sealed segments": len(await store.segments()),
            "sealed up to": sealed,
            "unsealed entries": last_sequence - sealed,
            "bucket": services.settings.audit.s3_bucket or "(not configured)",
            "retention days": services.settings.audit.retention_days,
        }

    for name, value in _run(work).items():
        click.echo(f"{name}: {value}")
