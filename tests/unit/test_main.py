"""``python -m app`` / ``litestar run``: a busy port stops ``run`` before uvicorn (and so the lifespan) starts."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from app.cli import ConnectionKeyCLIPlugin
from app.port_guard import PortInUse, guard_run_command, refuse_busy_port


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group(started: list[dict]) -> click.Group:
    """A stand-in for Litestar's root group with a ``run`` command taking the same address options."""

    @click.command(name="run")
    @click.option("--host", default="127.0.0.1")
    @click.option("--port", type=int, default=8000)
    @click.option("--fd", type=int, default=None)
    @click.option("--uds", default=None)
    def run(**kwargs: object) -> None:
        started.append(kwargs)

    group = click.Group()
    group.add_command(run)
    return group


def test_a_busy_port_is_refused_naming_it(busy_port: int) -> None:
    with pytest.raises(PortInUse, match=f"port {busy_port} on 127.0.0.1 is already in use"):
        refuse_busy_port("127.0.0.1", busy_port)
    refuse_busy_port("127.0.0.1", _free_port())  # a free one passes


def test_an_unresolvable_host_is_left_to_uvicorn() -> None:
    refuse_busy_port("no-such-host.invalid", 8000)


def test_run_stops_before_starting_on_a_busy_port(busy_port: int) -> None:
    started: list[dict] = []
    group = _group(started)
    ConnectionKeyCLIPlugin().on_cli_init(group)  # what `litestar run` and `python -m app` go through
    guard_run_command(group)  # twice is once

    refused = CliRunner().invoke(group, ["run", "--port", str(busy_port)])
    assert refused.exit_code == 1 and f"port {busy_port}" in refused.output and "--port" in refused.output
    assert started == []

    free = _free_port()
    assert CliRunner().invoke(group, ["run", "--port", str(free)]).exit_code == 0
    assert [s["port"] for s in started] == [free]
    # A socket handed over (--fd) or a Unix socket (--uds) is not a TCP port to check.
    assert CliRunner().invoke(group, ["run", "--port", str(busy_port), "--uds", "/tmp/x.sock"]).exit_code == 0
    assert len(started) == 2
    assert "ck" in group.commands
