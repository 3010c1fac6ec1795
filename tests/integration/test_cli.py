"""The ``litestar ck`` commands, and the README walkthrough against a real server process."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.auth import JwtVerifier
from app.cli import ck
from app.demo import demo_user_id
from app.settings import load_settings
from tests.integration.conftest import MIGRATIONS

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["migrate", "load-templates", "seed-demo", "mint-token", "answer-sheet"]


def test_every_command_has_help() -> None:
    runner = CliRunner()
    assert runner.invoke(ck, ["--help"]).exit_code == 0
    for command in COMMANDS:
        result = runner.invoke(ck, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command


def test_migrate_load_and_seed(database_url: str) -> None:
    runner = CliRunner()
    env = {"CK_DATABASE__URL": database_url, "CK_DATABASE__AUTO_MIGRATE": "false", "CK_LOGGING__LEVEL": "WARNING"}
    migrated = runner.invoke(ck, ["migrate"], env=env)
    assert migrated.exit_code == 0, migrated.output
    assert f"Running {MIGRATIONS} migrations" in migrated.output
    loaded = runner.invoke(ck, ["load-templates"], env=env)
    assert loaded.exit_code == 0 and loaded.output.strip() == "loaded 14 templates", loaded.output
    seeded = runner.invoke(ck, ["seed-demo"], env=env)
    assert seeded.exit_code == 0, seeded.output
    assert f"alice\t{demo_user_id('alice')}" in seeded.output
    bad = runner.invoke(ck, ["load-templates", "--directory", str(ROOT / "tests")], env=env)
    assert bad.exit_code != 0 and "no *.toml template files" in bad.output


def test_mint_token_is_development_only() -> None:
    runner = CliRunner()
    minted = runner.invoke(ck, ["mint-token", "alice"], env={"CK_SERVER__ENVIRONMENT": "development"})
    assert minted.exit_code == 0, minted.output
    principal = asyncio.run(JwtVerifier(load_settings(environ={}).auth).verify(minted.output.strip()))
    assert principal.user_id == demo_user_id("alice")
    production = {
        "CK_SERVER__ENVIRONMENT": "production",
        "CK_AUTH__JWT_SECRET": "p" * 40,
        "CK_SIGNING__KEYS": json.dumps({"dev-1": "s" * 40}),
    }
    refused = runner.invoke(ck, ["mint-token", "alice"], env=production)
    assert refused.exit_code != 0 and "development" in refused.output
    assert runner.invoke(ck, ["mint-token", "not-a-user"]).exit_code != 0


def test_bad_settings_stop_start_up_naming_the_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--port", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CK_QUIZ__CHOICES_PER_QUESTION": "many"},
    )
    assert result.returncode != 0
    assert "choices_per_question" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(method: str, url: str, token: str | None = None, body: bytes | None = None) -> dict:
    request = urllib.request.Request(url, data=body, method=method, headers={"content-type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_readme_walkthrough_against_a_real_server(tmp_path: Path) -> None:
    """Seed demo, mint a token, create, answer, submit, see the conversation unlocked: as README says."""
    port = _free_port()
    env = {**os.environ, "CK_DATABASE__URL": f"sqlite:///{tmp_path / 'walk.sqlite3'}"}
    cli = [sys.executable, "-m", "litestar", "--app", "app:create_app", "ck"]
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if _http("GET", f"{base}/ready")["status"] == "ready":
                    break
            except OSError:
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.2)

        def run(*args: str, stdin: str | None = None) -> str:
            return subprocess.run(
                [*cli, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, input=stdin, check=True
            ).stdout

        ids = dict(line.split("\t") for line in run("seed-demo").strip().splitlines())
        token = run("mint-token", "alice").strip()
        key = _http("POST", f"{base}/connection-keys", token, json.dumps({"targetUserId": ids["bob"]}).encode())
        answers = run("answer-sheet", "-", stdin=json.dumps(key))
        result = _http("POST", f"{base}/connection-keys/{key['id']}/responses", token, answers.encode())
        assert result["passed"] is True and result["unlockState"] == "UNLOCKED"
        query = json.dumps({"query": f'{{ conversation(id: "{key["conversationId"]}") {{ unlockState }} }}'}).encode()
        bob_token = run("mint-token", "bob").strip()
        deadline = time.monotonic() + 10
        while _http("POST", f"{base}/graphql", bob_token, query)["data"]["conversation"]["unlockState"] != "UNLOCKED":
            assert time.monotonic() < deadline
            time.sleep(0.1)

        # The wrong-answer flow needs a pair not yet unlocked: alice and carol.
        body = json.dumps({"targetUserId": ids["carol"]}).encode()
        key = _http("POST", f"{base}/connection-keys", token, body)
        answers = run("answer-sheet", "--wrong", "-", stdin=json.dumps(key))
        result = _http("POST", f"{base}/connection-keys/{key['id']}/responses", token, answers.encode())
        assert result["passed"] is False and result["unlockState"] == "RETRY_AVAILABLE", result
        assert result["retryAvailableAt"] and result["feedback"]
        with pytest.raises(urllib.error.HTTPError) as refused:  # within retry.cooldown_seconds
            _http("POST", f"{base}/connection-keys", token, body)
        problem = json.loads(refused.value.read())
        assert refused.value.code == 429 and problem["code"] == "RATE_LIMITED"
        assert f"try again in {problem['retryAfter']} seconds" in problem["detail"], problem
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    # uvicorn re-raises the SIGTERM it handled, after a graceful shutdown.
    assert server.returncode in (0, -15), stderr[-2000:]
    assert "Application shutdown complete" in stderr and "Traceback" not in stderr, stderr[-2000:]
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert lines and all(line["timestamp"].endswith("Z") for line in lines)
    assert all("request_id" in line for line in lines if line["event"] in ("request", "quiz submitted"))
    assert token not in stderr and ids["bob"] not in stderr


@pytest.mark.parametrize("command", [["-m", "app"], ["-m", "litestar", "--app", "app:create_app", "run"]])
def test_a_busy_port_stops_start_up_at_once(command: list[str], tmp_path: Path) -> None:
    """A second server on the same port fails naming it, before migrating or loading the model."""
    database = tmp_path / "never.sqlite3"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, *command, "--port", str(port)],
            cwd=tmp_path,  # var/models would be built here if the lifespan ran
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT), "CK_DATABASE__URL": f"sqlite:///{database}"},
        )
    assert result.returncode != 0
    assert f"port {port}" in result.stderr + result.stdout, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "migrations" not in result.stderr
    assert not database.exists() and not (tmp_path / "var").exists()
