"""connectionKeyStatus over WebSocket (graphql-transport-ws and the legacy graphql-ws) against a real
uvicorn server: authentication at connection_init, participants only, close codes, token expiry, a
subscriber that never reads, many subscribers coming and going."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from app.domain.events import ConversationStatusChanged
from app.domain.quiz import UnlockState
from app.services.unlock_orchestrator import status_channel
from app.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import Api
from tests.ws_client import TRANSPORT_WS, WS, GraphQLWebSocket, serve_app

STATUS = """subscription($id: ID!) {
  connectionKeyStatus(conversationId: $id) { conversationId unlockState attemptId score updatedAt }
}"""

SQLITE = pytest.mark.parametrize("backend", ["sqlite"])


@dataclass
class Live:
    api: Api
    url: str

    def auth(self, user: uuid.UUID, key: str = "Authorization", **token: Any) -> dict[str, str]:
        return {key: f"Bearer {self.api.token(user, **token)}"}


@pytest_asyncio.fixture
async def live(api: Api) -> AsyncIterator[Live]:
    async with serve_app(api.app) as base:
        yield Live(api, base + api.settings.server.graphql_path)


def _subscribers(api: Api, conversation_id: str | None = None) -> int:
    """Open pub/sub subscriptions (the in-memory pub/sub's bookkeeping)."""
    table = api.services.pubsub._subscribers  # type: ignore[attr-defined]
    if conversation_id is not None:
        return len(table.get(status_channel(conversation_id), ()))
    return sum(len(queues) for queues in table.values())


async def _conversation(api: Api) -> tuple[uuid.UUID, uuid.UUID, dict[str, Any]]:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    return alice, bob, await api.create_key(alice, bob)


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll server-side state (bounded)."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - nothing to wait on: the state lives in the server
            await asyncio.sleep(0.01)


def _status(message: dict[str, Any], operation_id: str = "s1") -> dict[str, Any]:
    assert message["id"] == operation_id and message["type"] in ("next", "data"), message
    assert "errors" not in message["payload"], message
    return message["payload"]["data"]["connectionKeyStatus"]


def _encoded_status(conversation_id: str, participants: list[uuid.UUID], n: int = 0) -> bytes:
    return msgspec.json.encode(
        ConversationStatusChanged(
            conversation_id=uuid.UUID(conversation_id),
            participant_ids=participants,
            unlock_state=UnlockState.RETRY_AVAILABLE,
            attempt_id=uuid.uuid4(),
            score=n / 1000,
            retry_available_at=None,
            updated_at=datetime.now(UTC),
        )
    )


async def _open_subscription(client: GraphQLWebSocket, auth: dict[str, str], conversation_id: str) -> dict:
    ack = await client.init(auth)
    assert ack["type"] == "connection_ack", ack
    await client.subscribe("s1", STATUS, id=conversation_id)
    return _status(await client.receive())


@pytest.mark.asyncio
async def test_both_participants_see_the_unlock(live: Live) -> None:
    api = live.api
    alice, bob, key = await _conversation(api)
    cid = key["conversationId"]
    async with GraphQLWebSocket.open(live.url) as a, GraphQLWebSocket.open(live.url) as b:
        for client, user in ((a, alice), (b, bob)):
            first = await _open_subscription(client, live.auth(user), cid)
            assert first["conversationId"] == cid and first["unlockState"] == "LOCKED"
            assert first["attemptId"] is None and first["score"] is None and first["updatedAt"]
        assert _subscribers(api, cid) == 2

        result = await api.submit(alice, key["signedPayload"], await api.answers(key))
        outcome = result["data"]["submitConnectionKey"]
        assert outcome["unlockState"] == "UNLOCKED", result
        for client in (a, b):
            status = _status(await client.receive(timeout=15))
            assert status["unlockState"] == "UNLOCKED"
            assert status["attemptId"] == outcome["attemptId"]
            assert status["score"] == pytest.approx(outcome["score"])

        # Subscribing after the unlock still shows it: the first message is the current state.
        await b.subscribe("late", STATUS, id=cid)
        late = _status(await b.receive(), "late")
        assert (late["unlockState"], late["attemptId"]) == ("UNLOCKED", None)

        await a.send({"id": "s1", "type": "complete"})
        await _until(lambda: _subscribers(api, cid) == 2)  # b's two remain
    await _until(lambda: _subscribers(api) == 0)


@SQLITE
@pytest.mark.asyncio
async def test_an_outsider_gets_an_error_not_a_stream(live: Live) -> None:
    api = live.api
    _, _, key = await _conversation(api)
    cid = key["conversationId"]
    cases = [(cid, "FORBIDDEN"), (str(uuid.uuid4()), "NOT_FOUND"), ("not-a-uuid", "BAD_USER_INPUT")]
    async with GraphQLWebSocket.open(live.url) as carol:
        assert (await carol.init(live.auth(uuid.uuid4())))["type"] == "connection_ack"
        for n, (conversation_id, code) in enumerate(cases):
            await carol.subscribe(f"op{n}", STATUS, id=conversation_id)
            message = await carol.receive()
            assert (message["type"], message["id"]) == ("error", f"op{n}"), message
            assert message["payload"][0]["extensions"]["code"] == code, message
        assert _subscribers(api) == 0
        await carol.send({"type": "ping"})
        assert await carol.receive() == {"type": "pong"}  # still connected, just refused

    async with GraphQLWebSocket.open(live.url, WS) as carol:  # legacy protocol: one error, not a list
        assert (await carol.init(live.auth(uuid.uuid4())))["type"] == "connection_ack"
        await carol.subscribe("op", STATUS, id=cid)
        message = await carol.receive()
        assert (message["type"], message["payload"]["extensions"]["code"]) == ("error", "FORBIDDEN"), message


@SQLITE
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "payload",
    [
        None,
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": 42},
        "expired",
        "wrong-secret",
    ],
    ids=["no-payload", "no-token", "junk", "not-bearer", "not-a-string", "expired", "wrong-secret"],
)
async def test_connection_init_without_a_valid_token_is_refused(live: Live, payload: Any) -> None:
    user = uuid.uuid4()
    if payload == "expired":
        payload = live.auth(user, ttl_seconds=-600)
    elif payload == "wrong-secret":
        from app.auth import mint_token

        token = mint_token("another-secret-of-sufficient-length-0123456789", user, audience="authenticated")
        payload = {"Authorization": f"Bearer {token}"}
    async with GraphQLWebSocket.open(live.url) as client:
        await client.send(
            {"type": "connection_init"} if payload is None else {"type": "connection_init", "payload": payload}
        )
        assert await client.closed() == (4403, "Forbidden")


@SQLITE
@pytest.mark.asyncio
async def test_subscribing_before_connection_init_is_unauthorized(live: Live) -> None:
    async with GraphQLWebSocket.open(live.url) as client:
        await client.subscribe("s1", STATUS, id=str(uuid.uuid4()))
        assert await client.closed() == (4401, "Unauthorized")


@SQLITE
@pytest.mark.asyncio
async def test_legacy_protocol_rejection_is_a_connection_error(live: Live) -> None:
    async with GraphQLWebSocket.open(live.url, WS) as client:
        error = await client.init({"Authorization": "Bearer junk"})
        assert error["type"] == "connection_error", error
        assert error["payload"]["extensions"] == {"code": "UNAUTHENTICATED", "reason": "malformed"}
        assert (await client.closed())[0] == 1011


@SQLITE
@pytest.mark.asyncio
@pytest.mark.parametrize("key", ["authorization", "AUTHORIZATION", "Authorization", "aUtHoRiZaTiOn"])
async def test_the_authorization_key_is_case_insensitive(live: Live, key: str) -> None:
    alice, _, payload = await _conversation(live.api)
    async with GraphQLWebSocket.open(live.url) as client:
        first = await _open_subscription(client, live.auth(alice, key), payload["conversationId"])
        assert first["unlockState"] == "LOCKED"


@SQLITE
@pytest.mark.asyncio
async def test_the_upgrade_request_header_is_the_fallback(live: Live) -> None:
    alice, _, payload = await _conversation(live.api)
    async with GraphQLWebSocket.open(live.url, additional_headers=live.auth(alice)) as client:
        first = await _open_subscription(client, {}, payload["conversationId"])
        assert first["unlockState"] == "LOCKED"


@SQLITE
@pytest.mark.asyncio
async def test_legacy_graphql_ws_protocol(live: Live) -> None:
    api = live.api
    alice, bob, key = await _conversation(api)
    cid = key["conversationId"]
    async with GraphQLWebSocket.open(live.url, WS) as client:
        await client.send({"type": "connection_init", "payload": live.auth(bob, "authorization")})
        assert await client.receive() == {"type": "connection_ack"}
        keep_alive = msgspec.json.decode(await client.connection.recv())
        assert keep_alive == {"type": "ka"}  # sent right after the ack, then every interval
        await client.subscribe("s1", STATUS, id=cid)
        assert _status(await client.receive())["unlockState"] == "LOCKED"
        await api.services.pubsub.publish(status_channel(cid), _encoded_status(cid, [alice, bob], 500))
        status = _status(await client.receive())
        assert (status["unlockState"], status["score"]) == ("RETRY_AVAILABLE", 0.5)
        await client.send({"id": "s1", "type": "stop"})
        assert await client.receive() == {"id": "s1", "type": "complete"}
        await _until(lambda: _subscribers(api) == 0)


@SQLITE
@pytest.mark.asyncio
async def test_ping_gets_pong(live: Live) -> None:
    async with GraphQLWebSocket.open(live.url) as client:
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}
        assert (await client.init(live.auth(uuid.uuid4())))["type"] == "connection_ack"
        await client.send({"type": "ping", "payload": {"at": 1}})
        assert await client.receive() == {"type": "pong"}
        await client.send({"type": "pong"})  # an unsolicited pong is allowed and unanswered
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}


@SQLITE
@pytest.mark.asyncio
async def test_an_expired_token_closes_the_socket(
    api_factory: Callable[[Settings], Awaitable[Api]], database_url: str
) -> None:
    api = await api_factory(make_settings(database_url, auth={"leeway_seconds": 0}))
    alice, _, key = await _conversation(api)
    cid = key["conversationId"]
    async with serve_app(api.app) as base:
        live = Live(api, base + api.settings.server.graphql_path)
        for protocol in (TRANSPORT_WS, WS):
            async with GraphQLWebSocket.open(live.url, protocol) as client:
                auth = live.auth(alice, ttl_seconds=2)
                expires = time.time() + 2
                await _open_subscription(client, auth, cid)
                assert _subscribers(api, cid) == 1
                assert await client.closed(timeout=6) == (4403, "Token expired")
                assert time.time() >= int(expires) - 1  # not before the token's exp (whole seconds)
                await _until(lambda: _subscribers(api, cid) == 0)


@SQLITE
@pytest.mark.asyncio
async def test_a_subscriber_that_never_reads_is_dropped(
    api_factory: Callable[[Settings], Awaitable[Api]], settings: Settings
) -> None:
    server = msgspec.structs.replace(settings.server, ws_send_timeout_seconds=0.5)
    api = await api_factory(msgspec.structs.replace(settings, server=server))
    alice, bob, key = await _conversation(api)
    cid = key["conversationId"]
    async with serve_app(api.app, send_buffer=4096) as base:
        live = Live(api, base + api.settings.server.graphql_path)
        # The stalled client: small receive buffer, no compression, a short frame queue, never reads.
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", int(base.rsplit(":", 1)[1])))
        async with (
            GraphQLWebSocket.open(live.url, sock=raw, compression=None, max_queue=4) as slow,
            GraphQLWebSocket.open(live.url) as fast,
        ):
            await _open_subscription(slow, live.auth(bob), cid)
            await _open_subscription(fast, live.auth(alice), cid)
            received: list[float] = []

            async def read_fast() -> None:
                while True:
                    received.append(_status(await fast.receive(timeout=30))["score"])

            reader = asyncio.create_task(read_fast())
            published = 0
            try:
                while _subscribers(api, cid) == 2:
                    assert published < 5000, "the stalled subscriber was never dropped"
                    for _ in range(16):
                        published += 1
                        await api.services.pubsub.publish(
                            status_channel(cid), _encoded_status(cid, [alice, bob], published)
                        )
                    await _until(lambda n=published: len(received) == n, timeout=10)
                    await asyncio.sleep(0.01)  # let the stalled socket's send time out, if it is stuck
                assert _subscribers(api, cid) == 1
                # The reader keeps everything; the stalled one gets the close code once it reads again.
                assert received == [pytest.approx(n / 1000) for n in range(1, published + 1)]
                with capture_logs() as logs:
                    await asyncio.sleep(1.0)  # the stalled send times out; the server starts closing
                assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["websocket_send_stalled"]
            finally:
                reader.cancel()
            code, reason = await slow.closed(timeout=15)
            assert (code, reason) == (1013, "Subscriber fell behind")
            print(f"stalled subscriber dropped after {published} messages")
    assert _subscribers(api) == 0


def _tasks() -> int:
    """Running tasks, less uvicorn's main loop tick (a short-lived ``Event.wait`` task)."""
    return sum(1 for task in asyncio.all_tasks() if "Event.wait" not in repr(task.get_coro()))


@SQLITE
@pytest.mark.asyncio
async def test_many_subscribers_connect_and_leave(live: Live) -> None:
    api = live.api
    alice, bob, key = await _conversation(api)
    cid = key["conversationId"]
    auths = [live.auth(alice), live.auth(bob)]
    baseline_tasks = _tasks()
    total, wave = 1000, 100

    async def one(n: int) -> None:
        async with GraphQLWebSocket.open(live.url, TRANSPORT_WS if n % 3 else WS) as client:
            await _open_subscription(client, auths[n % 2], cid)
            if n % 4 == 0:
                await client.send({"id": "s1", "type": "complete" if client.protocol == TRANSPORT_WS else "stop"})
            elif n % 4 == 1:
                client.connection.transport.abort()  # gone without a close frame

    started = time.perf_counter()
    for first in range(0, total, wave):
        await asyncio.gather(*(one(n) for n in range(first, first + wave)))
    elapsed = time.perf_counter() - started
    await _until(lambda: _subscribers(api) == 0, timeout=10)
    await _until(lambda: _tasks() <= baseline_tasks, timeout=10)
    print(f"{total} subscribers connected, subscribed and left in {elapsed:.1f} s")


@SQLITE
@pytest.mark.asyncio
async def test_a_subscription_over_http_post_is_refused(api: Api) -> None:
    response = await api.client.post(
        "/graphql", json={"query": STATUS, "variables": {"id": str(uuid.uuid4())}}, headers=api.headers(uuid.uuid4())
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "WebSocket" in response.json()["errors"][0]["message"]


@SQLITE
@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", [TRANSPORT_WS, WS])
async def test_a_silent_socket_is_closed_after_the_init_wait(
    api_factory: Callable[[Settings], Awaitable[Api]],
    settings: Settings,
    protocol: str,
) -> None:
    server = msgspec.structs.replace(settings.server, ws_connection_init_seconds=0.3)
    api = await api_factory(msgspec.structs.replace(settings, server=server))
    async with serve_app(api.app) as base, GraphQLWebSocket.open(base + "/graphql", protocol) as client:
        assert await client.closed() == (4408, "Connection initialisation timeout")


@SQLITE
@pytest.mark.asyncio
async def test_an_oversized_message_closes_the_socket(live: Live) -> None:
    async with GraphQLWebSocket.open(live.url) as client:
        token = "x" * live.api.settings.server.max_body_bytes
        await client.send({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}})
        assert await client.closed() == (1009, "Message too big")


MALFORMED = [
    "[1, 2]",
    '"text"',
    '{"type": 5}',
    '{"id": "1", "type": "subscribe", "payload": 5}',
    '{"id": "1", "type": "subscribe", "payload": {"query": "{ me { userId } }", "variables": []}}',
    '{"type": "complete"}',
    "not json",
]


@SQLITE
@pytest.mark.asyncio
async def test_a_malformed_message_is_a_protocol_error(live: Live) -> None:
    for message in MALFORMED:
        async with GraphQLWebSocket.open(live.url) as client:
            assert (await client.init(live.auth(uuid.uuid4())))["type"] == "connection_ack"
            await client.connection.send(message)
            assert (await client.closed())[0] == 4400, message
        async with GraphQLWebSocket.open(live.url, WS) as client:  # the legacy protocol ignores it
            await client.connection.send(message)
            assert (await client.init(live.auth(uuid.uuid4())))["type"] == "connection_ack", message
