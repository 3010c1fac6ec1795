"""The faults ``bench/chaos.py`` injects: a scorer endpoint that can be stopped, a broker that can be paused,
service instances that can be killed with SIGKILL and started again.

Built on the test suite's servers (``tests.fake_chat_server``, ``tests.kafka_server``) and the
subscription benchmark's ``Service`` (``python -m app`` on a free port, output to a log file).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path

from subscriptions import Service

from tests.fake_chat_server import FakeChatServer, _Handler

__all__ = ["BrokerPause", "Instance", "ScorerEndpoint"]


class _OutageHandler(_Handler):
    """The fake chat server's handler, which drops the connection unanswered while the endpoint is down:
    a keep-alive connection opened before the stop must fail too, as it would when the process dies."""

    def do_POST(self) -> None:
        if self.server.down.is_set():  # type: ignore[attr-defined]
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        super().do_POST()


class _PinnedServer(ThreadingHTTPServer):
    """The fake chat server on a given port (the same one after a restart, so the service's setting holds)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeChatServer, port: int, down: threading.Event) -> None:
        self.fake = fake
        self.down = down
        self.handler_errors = 0
        super().__init__(("127.0.0.1", port), _OutageHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Counted, not printed: a request torn by the stop (e.g. an empty body) must not flood the output."""
        self.handler_errors += 1


class ScorerEndpoint:
    """A chat-completions endpoint for ``llm.rubric`` that grades by rules (``tests.fake_chat_server``) and
    can be stopped (connections refused, open ones dropped) and started again on the same port."""

    def __init__(self) -> None:
        self.fake = FakeChatServer()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.fake.port = probe.getsockname()[1]
        self._down = threading.Event()
        self._server: _PinnedServer | None = None
        self._thread: threading.Thread | None = None
        self.windows: list[tuple[datetime, datetime]] = []

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def start(self) -> None:
        self._down.clear()
        for _ in range(50):  # the port may linger for a moment after a stop
            try:
                self._server = _PinnedServer(self.fake, self.fake.port, self._down)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"cannot listen on 127.0.0.1:{self.fake.port} again")
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._down.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def outage(self, seconds: float, log: Callable[[str], None]) -> None:
        """Down for ``seconds`` (blocking; run it on a thread); the window is kept for the accounting."""
        began = datetime.now(UTC)
        log(f"fault: scorer endpoint stopped for {seconds:g}s (llm.rubric has no fallback)")
        self.stop()
        time.sleep(seconds)
        self.start()
        self.windows.append((began, datetime.now(UTC)))
        log("fault: scorer endpoint back")


class BrokerPause:
    """SIGSTOP, then SIGCONT, of the Tansu process: the broker hangs without closing a connection."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pause(self, seconds: float, log: Callable[[str], None]) -> None:
        log(f"fault: broker (Tansu pid {self.pid}) paused for {seconds:g}s (SIGSTOP)")
        os.kill(self.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(self.pid, signal.SIGCONT)
        log("fault: broker resumed (SIGCONT)")


class Instance:
    """One ``python -m app`` process of the service; ``kill`` is SIGKILL (no shutdown hook runs) and
    ``restart`` starts a fresh process with the same settings (on a new port: a load balancer's job)."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.env = env
        self.workdir = workdir
        self.generation = 0
        self.service: Service | None = None
        self.up = False

    @property
    def port(self) -> int:
        assert self.service is not None
        return self.service.port

    def _dir(self) -> Path:
        path = self.workdir / f"{self.name}-{self.generation}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self, timeout: float = 180.0) -> None:
        self.service = Service(self.env, None, self._dir())
        self.service.wait_ready(timeout)
        self.up = True

    def kill(self) -> None:
        assert self.service is not None
        self.up = False
        self.service.proc.send_signal(signal.SIGKILL)
        self.service.proc.wait(10)
        self.service.stop()  # the process is gone: this only closes its log file

    def restart(self, env: dict[str, str] | None = None) -> None:
        if env is not None:
            self.env = env
        self.generation += 1
        self.start()

    def log_paths(self) -> list[Path]:
        return sorted(self.workdir.glob(f"{self.name}-*/server.log"))

    def stop(self) -> None:
        self.up = False
        if self.service is not None:
            self.service.stop()
