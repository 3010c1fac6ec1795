"""A small asyncio TCP proxy for outage tests: clients connect to ``127.0.0.1:<port>``, bytes go both ways to
the target (a TCP ``(host, port)`` or a Unix socket path, as pgserver's PostgreSQL listens only on one).

``cut()`` closes every open connection and, until ``restore()``, closes each new one as soon as it is
accepted: to the client the server is gone (reset connections, EOF right after connecting), as in a network
partition or a database restart. No mocks: everything that passes the proxy reaches the real server.

The proxy runs its own event loop in a thread, like a network element outside the process: code under test
that blocks its loop (Piccolo's ``PostgresEngine`` checks the server version synchronously when it is built)
still gets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, Self

__all__ = ["TcpProxy"]

_CHUNK = 65536


class TcpProxy:
    def __init__(self, target: tuple[str, int] | str, *, host: str = "127.0.0.1") -> None:
        """``target``: ``(host, port)``, or a Unix socket path (a ``str``)."""
        self.target = target
        self.host = host
        self.port = 0
        self.accepted = 0
        """Connections forwarded to the target."""
        self.refused = 0
        """Connections closed on arrival while cut."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cut = False

    @property
    def is_cut(self) -> bool:
        return self._cut

    # -- control (from any thread) ---------------------------------------------------------------------

    def start(self) -> None:
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(started.set)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="tcp-proxy", daemon=True)
        self._thread.start()
        started.wait()
        self._call(self._listen)

    def stop(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = None

    def cut(self) -> None:
        """Close every open connection (both sides) and refuse new ones until ``restore()``."""

        async def cut() -> None:
            self._cut = True
            self._close_all()

        self._call(cut)

    def restore(self) -> None:
        async def restore() -> None:
            self._cut = False

        self._call(restore)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coroutine: Callable[[], Any]) -> Any:
        assert self._loop is not None, "the proxy is not started"
        return asyncio.run_coroutine_threadsafe(coroutine(), self._loop).result(timeout=10)

    # -- on the proxy's loop ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server = None

    def _close_all(self) -> None:
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            _abort(client_writer)
            return
        try:
            if isinstance(self.target, str):
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(self.target)
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client_writer)
            return
        if self._cut:  # cut while connecting upstream
            self.refused += 1
            _abort(client_writer)
            _abort(upstream_writer)
            return
        self.accepted += 1
        self._writers.update((client_writer, upstream_writer))
        pumps = [
            asyncio.create_task(_pump(client_reader, upstream_writer)),
            asyncio.create_task(_pump(upstream_reader, client_writer)),
        ]
        self._tasks.update(pumps)
        try:
            # Either direction ending ends the connection: close both sides.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for writer in (client_writer, upstream_writer):
                self._writers.discard(writer)
                _abort(writer)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once, without flushing: a reset, as when the peer vanishes."""
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
