"""A real server for WebSocket tests (uvicorn on a free port, in the test's loop) and a small GraphQL
WebSocket client speaking ``graphql-transport-ws`` or the legacy ``graphql-ws`` over ``websockets``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from litestar import Litestar
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

__all__ = ["TRANSPORT_WS", "WS", "GraphQLWebSocket", "serve_app"]

TRANSPORT_WS = "graphql-transport-ws"
WS = "graphql-ws"


@contextlib.asynccontextmanager
async def serve_app(app: Litestar, *, send_buffer: int | None = None) -> AsyncIterator[str]:
    """Serve ``app`` (its lifespan already running) with uvicorn on 127.0.0.1; yields the ws:// base URL.

    ``send_buffer`` pins SO_SNDBUF on the listening socket (accepted sockets inherit it), so a client
    that stops reading fills the server's buffers after a few kilobytes instead of megabytes.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",
        ws="websockets-sansio",
        log_config=None,
        access_log=False,
        backlog=2048,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class GraphQLWebSocket:
    """One client socket; :meth:`receive` skips the legacy protocol's ``ka`` keep-alives."""

    def __init__(self, connection: ClientConnection, protocol: str) -> None:
        self.connection = connection
        self.protocol = protocol

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, protocol: str = TRANSPORT_WS, **kwargs: Any) -> AsyncIterator[GraphQLWebSocket]:
        async with connect(url, subprotocols=[protocol], open_timeout=10, **kwargs) as connection:  # type: ignore[list-item]
            yield cls(connection, protocol)

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await self.connection.recv())
                if message.get("type") != "ka":
                    return message

    async def init(self, payload: dict[str, Any] | None) -> dict[str, Any]:
        """Send ``connection_init`` (without a payload when ``None``) and return the server's answer."""
        await self.send(
            {"type": "connection_init"} if payload is None else {"type": "connection_init", "payload": payload}
        )
        return await self.receive()

    async def subscribe(self, operation_id: str, query: str, **variables: Any) -> None:
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        await self.send({"id": operation_id, "type": kind, "payload": {"query": query, "variables": variables}})

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Read until the server closes; its close code and reason (code ``None``: no close frame)."""
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await self.connection.recv()
        frame = self.connection.protocol.close_rcvd
        return (frame.code, frame.reason) if frame is not None else (None, "")
