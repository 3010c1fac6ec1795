"""The service as a developer runs it (``python -m app``, development, SQLite) and Debian's chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def chromium_binary() -> str | None:
    """``CK_TEST_CHROMIUM``, else Debian's ``/usr/bin/chromium``, else a ``chromium`` on the PATH."""
    for candidate in (os.environ.get("CK_TEST_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="package")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m app`` in development on a free port with a fresh SQLite file; its base URL once ready."""
    workdir = tmp_path_factory.mktemp("docs-pages")
    port = _free_port()
    env = {
        **os.environ,
        "CK_SERVER__ENVIRONMENT": "development",
        "CK_DATABASE__URL": f"sqlite:///{workdir / 'ck.sqlite3'}",
        "CK_LOGGING__LEVEL": "WARNING",
        "CK_RATE_LIMIT__ENABLED": "false",
    }
    with open(workdir / "service.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (workdir / "service.log").read_text()[-2000:]
            try:
                if httpx.get(f"{base}/ready", timeout=2).json().get("status") == "ready":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline, "the service did not become ready in 60 s"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
