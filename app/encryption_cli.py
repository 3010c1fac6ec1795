"""``litestar ck keys ...`` (field-encryption keys) and ``litestar ck users erase`` (crypto-shredding)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import click

__all__ = ["keys", "users"]


def _services_run(work: Any) -> Any:
    from app.cli import _run

    return _run(work)


def _progress(label: str) -> Any:
    done = 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        click.echo(f"{label}: {done} done", err=True)

    return step


def _rotation(services: Any) -> Any:
    from app.services.key_rotation import KeyRotation

    return KeyRotation(services.db, services.encryption, services.audit, services.clock)


def _summary(report: Any) -> str:
    state = "complete" if report.complete else "incomplete: run it again to resume"
    return f"{report.phase}: {report.done} in {report.batches} batches, {state}"


@click.group(name="keys", help="Field-encryption keys: rotate KEKs and data keys, show where they stand.")
def keys() -> None:
    pass


_batch = click.option(
    "--batch-size", type=click.IntRange(1, 10_000), default=500, show_default=True, help="Rows per transaction."
)
_max_batches = click.option(
    "--max-batches",
    type=click.IntRange(1),
    default=None,
    help="Stop after this many batches (throttling); rerun to go on.",
)


@keys.command(
    help="Re-wrap every data key under encryption.active_key_id, then seal any plaintext left from before field "
    "encryption. Batched, resumable, safe while the service runs. Remove an old KEK only after `ck keys status` "
    "shows no key under it."
)
@_batch
@_max_batches
def rotate(batch_size: int, max_batches: int | None) -> None:
    from app.services.key_encryption_keys import UnknownKekError

    async def work(services: Any) -> list[Any]:
        rotation = _rotation(services)
        return [
            await rotation.rewrap(batch_size, _progress("re-wrapped data keys"), max_batches),
            await rotation.seal_legacy(batch_size, _progress("sealed legacy owners"), max_batches),
        ]

    try:
        reports = _services_run(work)
    except UnknownKekError as exc:
        raise click.ClickException(f"{exc}: add that KEK back to encryption.keys and run again") from None
    for report in reports:
        click.echo(_summary(report))


@keys.command(
    name="rotate-data",
    help="Give every user whose data key is older than --before a fresh data key and re-seal all their values "
    "(one transaction per user). Resumable: rerun with the same --before.",
)
@_batch
@_max_batches
@click.option(
    "--before",
    type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Cutoff (UTC when no offset); default: now.",
)
def rotate_data(batch_size: int, max_batches: int | None, before: datetime | None) -> None:
    cutoff = (before if before and before.tzinfo else (before or datetime.now(UTC)).replace(tzinfo=UTC)).astimezone(UTC)
    click.echo(
        f"rotating data keys made before {cutoff.strftime('%Y-%m-%dT%H:%M:%S%z')} (pass it as --before to resume)",
        err=True,
    )

    async def work(services: Any) -> Any:
        return await _rotation(services).rotate_data(cutoff, batch_size, _progress("rotated users"), max_batches)

    click.echo(_summary(_services_run(work)))


@keys.command(help="Data keys per KEK (current and previous generation) and erased users.")
def status() -> None:
    async def work(services: Any) -> Any:
        from app.services.key_rotation import legacy_plaintext_left

        keks = services.encryption.keks
        return keks.active_key_id, await services.encryption.store.count_by_kek(), await legacy_plaintext_left()

    active, counts, legacy = _services_run(work)
    click.echo(f"active KEK: {active}")
    for kek in sorted(set(counts.current) | set(counts.previous)):
        marker = "" if kek == active else "  (not active: re-wrap with `ck keys rotate`)"
        click.echo(f"{kek}\tcurrent={counts.current.get(kek, 0)}\tprevious={counts.previous.get(kek, 0)}{marker}")
    click.echo(f"erased users: {counts.destroyed}")
    click.echo(
        "legacy plaintext: some left (run `ck keys rotate`; keep encryption.legacy_plaintext = read)"
        if legacy
        else "legacy plaintext: none found in the probed columns (one sealed column per table; "
        "encryption.legacy_plaintext = refuse then rejects any plaintext left elsewhere as tampering)"
    )


@click.group(name="users", help="User administration.")
def users() -> None:
    pass


@users.command(
    help="Erase USER_ID by crypto-shredding: destroy their data key (their sealed data becomes unreadable "
    "everywhere), remove their profile and devices, revoke open keys. Audited; idempotent."
)
@click.argument("user_id", type=click.UUID)
def erase(user_id: uuid.UUID) -> None:
    from app.domain.audit_chain import AuditActor
    from app.errors import ServiceError

    async def work(services: Any) -> Any:
        return await services.erasure.erase(user_id, AuditActor.system())

    try:
        result = _services_run(work)
    except ServiceError as exc:
        raise click.ClickException(f"{exc.code.value}: {exc.message}") from None
    status = result.status.replace("_", " ")
    click.echo(f"{status} {user_id} (revoked keys: {result.revoked_keys}, devices: {result.removed_devices})")
