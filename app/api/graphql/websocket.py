"""GraphQL over WebSocket at the GraphQL path: ``graphql-transport-ws`` and the legacy ``graphql-ws``.

Strawberry runs both protocols; this module adds what a long-lived, authenticated socket needs:

- **Authentication at ``connection_init``.** The payload carries ``{"Authorization": "Bearer <jwt>"}``
  (key case-insensitive; the upgrade request's ``Authorization`` header is the fallback). The caller is
  verified once per connection and every operation on the socket acts as them.
- **Closing at token expiry.** The socket is closed when the token's ``exp`` (plus the configured
  leeway, as in verification) passes; the client reconnects with a fresh token.
- **A bounded send path.** A send that cannot complete in :attr:`SubscriptionConnection.send_timeout_seconds`
  (the client stopped reading and the transport's buffer is full) closes the socket instead of waiting
  forever; together with the pub/sub's bounded per-subscriber queue this keeps memory flat whatever a
  client does.

What a client sees (``graphql-transport-ws``). The graphql-ws client library reconnects after 4403, 4408
and 1013, calling ``connectionParams`` again (so a refreshed token is picked up), and gives up after 4400,
4401, 4409, 4429 and 1009:

======  ==========================================================================================
code    when
======  ==========================================================================================
4403    ``connection_init`` without a valid token (reason "Forbidden"), or the token expired while
        connected (reason "Token expired").
4401    ``subscribe`` before ``connection_ack`` (Strawberry).
4408    no ``connection_init`` within the wait time (Strawberry; here also for the legacy protocol).
4400    malformed message, or one nesting arrays or objects more than ``MAX_JSON_DEPTH`` levels deep
        (refused before decoding); 4409 duplicate operation id; 4429 second ``connection_init``
        (Strawberry).
1009    a message larger than the request body limit.
1013    the subscriber fell behind (its pub/sub queue overflowed or a send stalled): reconnect and
        subscribe again; the first message is the current state, so nothing is lost but the
        intermediate states.
======  ==========================================================================================

Legacy ``graphql-ws``: a rejected ``connection_init`` gets ``connection_error`` with
``{"message", "extensions": {"code": "UNAUTHENTICATED", "reason"}}`` and close code 1011 (Strawberry);
the server sends ``ka`` keep-alives; malformed messages are ignored, except one nested too deeply, which
gets an ``error`` without ``id`` (it cannot be read), ``extensions: {"code": "BAD_USER_INPUT", "limit":
"depth"}``, as subscriptions-transport-ws servers answer an unreadable message; the other close codes are
as above.

Both protocols: an operation beyond ``[server] ws_max_operations`` in flight on one socket gets the
protocol's ``error`` for its id with ``extensions: {"code": "BAD_USER_INPUT", "limit": "operations"}``.
Over ``graphql-transport-ws`` the server answers ``ping`` with ``pong``; transport-level keep-alive is
the ASGI server's WebSocket ping frames (uvicorn: ``ws_ping_interval``).

A client that stops reading altogether may not read the close frame either: it then sees the
connection end without one (1006) once the server gives up waiting (``close_timeout_seconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar, cast

import msgspec
import structlog
from litestar.exceptions import WebSocketDisconnect
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived, WebSocketDisconnected
from strawberry.litestar.controller import LitestarWebSocketAdapter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types.unset import UNSET, UnsetType

from app.api.graphql.context import GraphQLContext
from app.api.graphql.limits import LIMIT_EXTENSION_KEY
from app.api.json_nesting import MAX_JSON_DEPTH, nests_deeper_than
from app.errors import ErrorCode, ServiceError

__all__ = [
    "CLOSE_FELL_BEHIND",
    "CLOSE_FORBIDDEN",
    "GraphQLTransportWSHandler",
    "GraphQLWSHandler",
    "SubscriptionConnection",
    "authenticate_connection",
]

log = structlog.get_logger(__name__)

CLOSE_FORBIDDEN = 4403
"""graphql-transport-ws "Forbidden": no valid token at connection_init, or the token expired."""
CLOSE_FELL_BEHIND = 1013
"""RFC 6455 "Try Again Later": the subscriber fell behind and was dropped."""
CLOSE_INIT_TIMEOUT = 4408
CLOSE_BAD_REQUEST = 4400
CLOSE_MESSAGE_TOO_BIG = 1009

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class SubscriptionConnection(LitestarWebSocketAdapter):
    """Strawberry's Litestar WebSocket adapter with bounded sends, an idempotent close that never blocks
    its caller, and a scheduled close (token expiry). One per socket."""

    send_timeout_seconds: ClassVar[float] = 10.0
    """How long one message may wait for room in the transport's buffer before the client counts as
    not reading."""
    close_timeout_seconds: ClassVar[float] = 10.0
    """How long the close frame may wait for room in a stalled client's buffer."""
    max_message_chars: ClassVar[int] = 64 * 1024
    """Largest client message accepted (close 1009 beyond)."""

    def __init__(self, view: Any, request: Any, response: Any) -> None:
        super().__init__(view, request, response)
        self.closing = False
        self._receiving: asyncio.Timeout | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []

    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object, None]:
        """Client messages until the client disconnects or the server starts closing the socket."""
        while not self.closing:
            try:
                async with asyncio.timeout(None) as self._receiving:
                    text = await self.ws.receive_text()
            except (WebSocketDisconnect, TimeoutError):  # TimeoutError: begin_close() stopped the wait
                return
            finally:
                self._receiving = None
            if text == "":  # Litestar's rendering of a binary frame
                raise NonTextMessageReceived
            if len(text) > self.max_message_chars:
                self.begin_close(CLOSE_MESSAGE_TOO_BIG, "Message too big")
                return
            if nests_deeper_than(text.encode()):  # before msgspec recurses into it
                if ignore_parsing_errors:  # the legacy protocol: answer, keep the socket
                    await self.send_json({"type": "error", "payload": _too_deep()})
                    continue
                self.begin_close(CLOSE_BAD_REQUEST, "Message nested too deeply")
                return
            try:
                message = _decoder.decode(text)
            except msgspec.DecodeError as exc:
                if ignore_parsing_errors:
                    continue
                raise NonJsonMessageReceived from exc
            if not _well_formed(message):  # Strawberry indexes into messages unguarded
                if ignore_parsing_errors:
                    continue
                raise NonJsonMessageReceived
            yield message

    async def send_json(self, message: Mapping[str, object]) -> None:
        """Send one message; a client that has not made room for it in time is disconnected."""
        if self.closing:
            raise WebSocketDisconnected
        try:
            async with asyncio.timeout(self.send_timeout_seconds):
                await self.ws.send_data(_encoder.encode(message).decode(), mode="text")
        except TimeoutError:
            log.warning("websocket_send_stalled", timeout_seconds=self.send_timeout_seconds)
            self.begin_close(CLOSE_FELL_BEHIND, "Subscriber fell behind")
            raise WebSocketDisconnected from None
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            # OSError: the ASGI server saw the peer go before we did; RuntimeError: it already sent a close
            # (a failed keep-alive ping). Either way the socket is gone.
            raise WebSocketDisconnected from exc

    async def close(self, code: int, reason: str) -> None:
        """Strawberry's close (protocol errors, rejection): the same non-blocking close."""
        self.begin_close(code, reason)

    def begin_close(self, code: int, reason: str) -> None:
        """Close the socket once with ``code``: stop reading at once (so Strawberry ends every operation)
        and send the close frame in the background, waited for by :meth:`finish`."""
        if self.closing:
            return
        self.closing = True
        self._close_task = asyncio.get_running_loop().create_task(self._send_close(code, reason))
        if self._receiving is not None:
            self._receiving.reschedule(asyncio.get_running_loop().time())

    async def _send_close(self, code: int, reason: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await self.ws.close(code=code, reason=reason)

    def close_at(self, delay_seconds: float, code: int, reason: str) -> None:
        """Close the socket ``delay_seconds`` from now unless it ended before."""
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(max(delay_seconds, 0.0), self.begin_close, code, reason))

    async def finish(self) -> None:
        """The protocol handler is done: cancel scheduled closes, let a pending close frame go out (bounded)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._close_task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_timeout_seconds):
                    await self._close_task


def _too_deep() -> dict[str, Any]:
    return {
        "message": f"The message nests arrays or objects more than {MAX_JSON_DEPTH} levels deep.",
        "extensions": {"code": ErrorCode.BAD_USER_INPUT.value, LIMIT_EXTENSION_KEY: "depth"},
    }


def _too_many_operations(limit: int) -> dict[str, Any]:
    return {
        "message": f"At most {limit} operations may run at once on one connection: complete one first.",
        "extensions": {"code": ErrorCode.BAD_USER_INPUT.value, LIMIT_EXTENSION_KEY: "operations"},
    }


def _well_formed(message: object) -> bool:
    """The shape Strawberry's handlers rely on: a typed object; operations carry an id (and a query)."""
    if not isinstance(message, dict) or not isinstance(kind := message.get("type"), str):
        return False
    payload = message.get("payload")
    if kind in ("subscribe", "start"):
        return (
            isinstance(message.get("id"), str)
            and isinstance(payload, dict)
            and isinstance(payload.get("query"), str)
            and isinstance(payload.get("variables", {}), dict | None)
            and isinstance(payload.get("operationName", ""), str | None)
        )
    if kind in ("complete", "stop"):
        return isinstance(message.get("id"), str)
    return payload is None or isinstance(payload, dict)


def _authorization(context: GraphQLContext) -> str | None:
    params = context.connection_params
    if isinstance(params, dict):
        for key, value in params.items():
            if isinstance(key, str) and key.lower() == "authorization":
                return value if isinstance(value, str) else None
    return context.authorization  # the upgrade request's header, for clients that can set one


async def authenticate_connection(context: GraphQLContext) -> UnsetType:
    """``on_ws_connect``: verify the token in the ``connection_init`` payload, remember the caller for
    every operation on the socket, and schedule the close at its expiry. Raises
    ``ConnectionRejectionError`` (graphql-transport-ws: close 4403; graphql-ws: ``connection_error``)."""
    header = _authorization(context)
    try:
        principal = await context.services.verifier.verify_authorization_header(header)
    except ServiceError as exc:
        extensions = {"code": exc.code.value, **exc.extra}
        raise ConnectionRejectionError({"message": exc.message, "extensions": extensions}) from None
    context.authorization, context.verified = header, principal
    if context.connection is not None:
        leeway = context.services.settings.auth.leeway_seconds
        expires = principal.expires_at + datetime.timedelta(seconds=leeway)
        context.connection.close_at(expires.timestamp() - time.time(), CLOSE_FORBIDDEN, "Token expired")
    return UNSET


def _connection(handler: Any) -> SubscriptionConnection:
    return cast(SubscriptionConnection, handler.websocket)


class GraphQLTransportWSHandler(BaseGraphQLTransportWSHandler[GraphQLContext, None]):
    """Strawberry's graphql-transport-ws handler, tied to the connection's lifecycle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context.connection = _connection(self)

    async def handle(self) -> None:
        try:
            await super().handle()
        finally:
            await _connection(self).finish()

    async def handle_task_exception(self, error: Exception) -> None:
        if not isinstance(error, WebSocketDisconnected):  # a client gone mid-send is not a server fault
            await super().handle_task_exception(error)

    async def handle_subscribe(self, message: Any) -> None:
        # Strawberry's own refusal at the limit is an error without a code: the same refusal, typed.
        limit = self.max_subscriptions_per_connection
        if (
            self.connection_acknowledged
            and message["id"] not in self.operations
            and limit is not None
            and len(self.operations) >= limit
        ):
            await self.send_message({"id": message["id"], "type": "error", "payload": [_too_many_operations(limit)]})
            return
        await super().handle_subscribe(message)


class GraphQLWSHandler(BaseGraphQLWSHandler[GraphQLContext, None]):
    """Strawberry's legacy graphql-ws handler, tied to the connection's lifecycle, with the
    ``connection_init`` wait time the newer protocol has."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context.connection = _connection(self)

    async def handle(self) -> None:
        connection = _connection(self)
        wait = self.view.connection_init_wait_timeout.total_seconds()
        timer = asyncio.get_running_loop().call_later(wait, self._init_timed_out)
        try:
            await super().handle()
        finally:
            timer.cancel()
            await connection.finish()

    async def handle_start(self, message: Any) -> None:
        # As in graphql-transport-ws: the limit's refusal, typed. A restart of a running id replaces it,
        # so it does not count against the limit.
        limit = self.max_subscriptions_per_connection
        if (
            self.connection_acknowledged
            and message["id"] not in self.tasks
            and limit is not None
            and len(self.tasks) >= limit
        ):
            await self.send_message({"type": "error", "id": message["id"], "payload": _too_many_operations(limit)})
            return
        await super().handle_start(message)

    def _init_timed_out(self) -> None:
        if not self.connection_acknowledged:
            _connection(self).begin_close(CLOSE_INIT_TIMEOUT, "Connection initialisation timeout")

    async def handle_async_results(self, *args: Any, **kwargs: Any) -> None:
        # The base lets a failed send escape the operation task, where nobody retrieves it.
        with contextlib.suppress(WebSocketDisconnected):
            await super().handle_async_results(*args, **kwargs)
