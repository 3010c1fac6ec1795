"""Refuse to start on a port that is already taken, before anything heavy happens.

uvicorn runs the application's lifespan (migrations, the embedding model, the workers) before it binds
its socket, so a second ``make run`` on a busy port would spend that start-up and only then fail with
``[Errno 98]``. :func:`guard_run_command` wraps Litestar's ``run`` command (``litestar run`` and
``python -m app`` both go through it) so that it tries the address first and stops at once, naming it.
"""

from __future__ import annotations

import errno
import functools
import socket
from typing import Any

import click

__all__ = ["PortInUse", "guard_run_command", "refuse_busy_port"]


class PortInUse(click.ClickException):
    """The address ``litestar run`` was asked to serve on is taken (exit status 1)."""


def refuse_busy_port(host: str, port: int) -> None:
    """Raise :class:`PortInUse` when ``host:port`` cannot be bound because something listens there.

    Binds the way uvicorn does (``SO_REUSEADDR``, so a socket in TIME_WAIT is no obstacle) and closes at
    once. Other bind errors (an address not on this machine, a privileged port) are left to uvicorn.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # uvicorn reports an unresolvable host in its own words
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on {host} is already in use (is another `make run` going?): "
                    f'stop it, or choose another port with --port (make run ARGS="--port {port + 1}")'
                ) from None


def guard_run_command(cli: click.Group) -> None:
    """Make ``cli``'s ``run`` command check its TCP address before it starts uvicorn (idempotent)."""
    command = cli.commands.get("run")
    if command is None or command.callback is None or getattr(command.callback, "_port_guarded", False):
        return
    start = command.callback

    @functools.wraps(start)
    def run(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("fd") is None and kwargs.get("uds") is None and kwargs.get("port") is not None:
            refuse_busy_port(kwargs.get("host") or "127.0.0.1", int(kwargs["port"]))
        return start(*args, **kwargs)

    run._port_guarded = True  # type: ignore[attr-defined]
    command.callback = run
