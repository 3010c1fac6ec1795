"""Shared fixtures: settings for each backend, and real servers started from PyPI packages.

PostgreSQL 16 comes from ``pgserver`` (one server per test session, a fresh database per test). Set
``CK_TEST_POSTGRES_URL`` to use a server you run yourself instead (each test still gets its own database).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.settings import Settings, load_settings

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A PostgreSQL 16 server for the session, or ``None`` when an external URL is configured."""
    if os.environ.get("CK_TEST_POSTGRES_URL"):
        yield None
        return
    import pgserver

    # Not under pytest's numbered tmp dirs: a concurrent pytest run may rotate those away.
    data_dir = Path(tempfile.mkdtemp(prefix="ck-pgserver-"))
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(data_dir, ignore_errors=True)


def _fresh_postgres_database(server: Any) -> str:
    name = f"ck_{uuid.uuid4().hex[:12]}"
    external = os.environ.get("CK_TEST_POSTGRES_URL")
    if external:
        import asyncio

        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(external)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        base, _, query = external.partition("?")
        return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    server.psql(f'CREATE DATABASE "{name}";')
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
    base, _, query = uri.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Run the test once per database backend."""
    return request.param


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ck.sqlite3'}"
    return _fresh_postgres_database(request.getfixturevalue("postgres_server"))


def make_settings(database_url: str, **sections: dict[str, Any]) -> Settings:
    """Test settings: the project defaults, a given database (migrated at start), overrides per section."""
    base = load_settings(environ={"CK_SETTINGS_FILE": str(Path(__file__).parents[1] / "litestar.toml")})
    data = msgspec.to_builtins(base)
    data["server"]["environment"] = "test"
    data["database"]["url"] = database_url
    data["database"]["auto_migrate"] = True
    data["logging"]["level"] = "WARNING"
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return msgspec.convert(data, Settings)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)
