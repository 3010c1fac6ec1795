"""``litestar ck ...``: migrations, template library, demo data and development tokens."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from litestar.plugins import CLIPluginProtocol

from app.audit_cli import audit
from app.domain.quiz import QuestionKind
from app.encryption_cli import keys, users
from app.port_guard import guard_run_command

__all__ = ["ConnectionKeyCLIPlugin"]

T = TypeVar("T")


def _settings():  # type: ignore[no-untyped-def]
    from app.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _run(work: Callable[[Any], Awaitable[T]], *, migrate: bool | None = None) -> T:
    """Open the services without background workers and run ``work(services)``."""
    import msgspec

    from app.observability import configure_logging
    from app.services.container import open_services

    settings = _settings()
    configure_logging(msgspec.structs.replace(settings.logging, json=False, level="WARNING"))
    if migrate is not None:
        settings = msgspec.structs.replace(
            settings, database=msgspec.structs.replace(settings.database, auto_migrate=migrate)
        )

    async def main() -> T:
        async with open_services(settings, background=False) as services:
            return await work(services)

    return asyncio.run(main())


def _development_only() -> None:
    if not _settings().is_development:
        raise click.ClickException("refused: this command runs only when server.environment is 'development'")


@click.group(name="ck", help="Connection Key administration.")
def ck() -> None:
    pass


@ck.command(help="Apply pending database migrations (piccolo_migrations/).")
def migrate() -> None:
    async def work(services: Any) -> list[str]:
        return await services.db.migrate()

    for line in _run(work, migrate=False):
        click.echo(line)


@ck.command(name="load-templates", help="Load the template library seed files into the database (upsert by key).")
@click.option("--directory", default=None, help="Folder of *.toml seed files (default: quiz.templates_dir).")
def load_templates(directory: str | None) -> None:
    async def work(services: Any) -> int:
        return await services.templates.load_files(directory or services.settings.quiz.templates_dir, services.clock)

    from app.services.template_library import TemplateFileError

    try:
        count = _run(work, migrate=False)
    except TemplateFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"loaded {count} templates")


@ck.command(name="seed-demo", help="Create or refresh the demo users' profiles (alice, bob, carol).")
def seed_demo() -> None:
    from app.demo import DEMO_USERS, demo_user_id

    async def work(services: Any) -> None:
        for name, profile in DEMO_USERS.items():
            await services.profiles.upsert(demo_user_id(name), profile)

    _run(work)
    for name in DEMO_USERS:
        click.echo(f"{name}\t{demo_user_id(name)}")


@ck.command(name="mint-token", help="Print a development JWT for a demo user or any user id (development only).")
@click.argument("user")
@click.option("--ttl", default=3600, show_default=True, help="Lifetime in seconds.")
@click.option("--service-role", is_flag=True, help="Mint a service_role token.")
def mint_token(user: str, ttl: int, service_role: bool) -> None:
    from app.auth import mint_token as mint
    from app.demo import DEMO_USERS, demo_user_id

    _development_only()
    settings = _settings()
    try:
        user_id = demo_user_id(user) if user in DEMO_USERS else uuid.UUID(user)
    except ValueError:
        raise click.BadParameter(f"not a demo user ({', '.join(DEMO_USERS)}) or a UUID", param_hint="USER") from None
    role = settings.auth.service_role if service_role else "authenticated"
    click.echo(
        mint(
            settings.auth.jwt_secret,
            user_id,
            role=role,
            audience=settings.auth.audience,
            ttl_seconds=ttl,
            issuer=settings.auth.issuer,
        )
    )


@ck.command(
    name="answer-sheet",
    help="Read a createConnectionKey response (REST or GraphQL JSON, file or '-') and print a submission body "
    "answering it with the target's own words (development only). --wrong answers every question wrongly.",
)
@click.argument("payload_file", type=click.File("r"))
@click.option("--wrong", is_flag=True, help="Answer every comprehension and consent question wrongly.")
def answer_sheet(payload_file: Any, wrong: bool) -> None:
    _development_only()
    document = json.load(payload_file)
    payload = document.get("data", {}).get("createConnectionKey") if "data" in document else document
    if not isinstance(payload, dict) or "id" not in payload:
        raise click.ClickException("not a createConnectionKey response")

    async def work(services: Any) -> Any:
        return await services.key_store.get_quiz(uuid.UUID(payload["id"]))

    found = _run(work)
    if found is None:
        raise click.ClickException("no such connection key in this database")
    answers = []
    for question in found[0].questions:
        if question.kind is QuestionKind.FREE_RESPONSE:
            about = question.references[0].lower() if question.references else question.topic
            value = f"You wrote that {about}, which made me smile. How did that start?"
        elif question.choices is None:  # free-text comprehension, scored by meaning
            value = "I honestly do not remember what they wrote." if wrong else question.answer_key or ""
        elif wrong:
            value = next(c for c in question.choices if c != question.answer_key)
        else:
            value = question.answer_key
        answers.append({"questionId": str(question.id), "value": value, "elapsedMs": 4000})
    json.dump({"signedPayload": payload["signedPayload"], "answers": answers}, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


ck.add_command(audit)
ck.add_command(keys)
ck.add_command(users)


class ConnectionKeyCLIPlugin(CLIPluginProtocol):
    """Adds the ``ck`` command group to the Litestar CLI."""

    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(ck)
        guard_run_command(cli)  # a busy port stops `run` before the lifespan migrates and loads the model
