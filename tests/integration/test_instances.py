"""Two instances on one database, Redis and Kafka: a subscriber on one sees an unlock submitted on the
other. Instance 1 runs in this process (so the test can read its state); instance 2 is a separate
``python -m app`` process, as in production."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from tests import kafka_server as kafka_fixtures
from tests import redis_server as redis_fixtures
from tests.conftest import make_settings
from tests.integration.conftest import Api
from tests.kafka_server import KafkaTestServer
from tests.ws_client import GraphQLWebSocket, serve_app

redis_server = redis_fixtures.redis_server
redis_url = redis_fixtures.redis_url
kafka_server = kafka_fixtures.kafka_server
kafka_topic = kafka_fixtures.kafka_topic

ROOT = Path(__file__).resolve().parents[2]
SUBSCRIPTION = """subscription($id: ID!) { connectionKeyStatus(conversationId: $id) {
  conversationId unlockState attemptId score updatedAt } }"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def second_instance(env: dict[str, str]) -> AsyncIterator[str]:
    """``python -m app`` on a free port with ``env``; yields its base URL once ``/ready`` says ready."""
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "--port",
        str(port),
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            async with asyncio.timeout(60):
                while True:
                    assert process.returncode is None, f"instance 2 exited with {process.returncode}"
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get("/ready")).json().get("status") == "ready":
                            break
                    await asyncio.sleep(0.2)
        yield base
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(20):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.mark.asyncio
async def test_a_subscriber_on_one_instance_sees_an_unlock_submitted_on_another(
    api_factory: Callable[[Settings], Awaitable[Api]],
    database_url: str,
    redis_url: str,
    kafka_server: KafkaTestServer,
    kafka_topic: str,
) -> None:
    options = kafka_server.bus_options()
    kafka = {
        "bootstrap_servers": kafka_server.bootstrap_servers,
        "topic": kafka_topic,
        "group_prefix": f"{kafka_topic}.",  # a fresh group: no member left over from another test
        "idempotent_producer": options["idempotent_producer"],
        "session_timeout_ms": options["session_timeout_ms"],
        "heartbeat_interval_ms": options["heartbeat_interval_ms"],
    }
    one = await api_factory(make_settings(database_url, redis={"url": redis_url}, kafka=kafka))
    env = {
        "CK_SERVER__ENVIRONMENT": "test",
        "CK_LOGGING__LEVEL": "WARNING",
        "CK_DATABASE__URL": database_url,
        "CK_DATABASE__AUTO_MIGRATE": "false",  # instance 1 migrated it
        "CK_REDIS__URL": redis_url,
        **{
            f"CK_KAFKA__{key.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in kafka.items()
        },
    }
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await one.upsert_profile(alice, "Alice")
    await one.upsert_profile(bob, "Bob")
    payload = await one.create_key(alice, bob)  # created on instance 1
    conversation = payload["conversationId"]

    async with second_instance(env) as two, serve_app(one.app) as ws_base:
        url = ws_base + one.settings.server.graphql_path
        async with GraphQLWebSocket.open(url) as alice_ws, GraphQLWebSocket.open(url) as bob_ws:
            for user, ws in ((alice, alice_ws), (bob, bob_ws)):
                assert (await ws.init({"Authorization": f"Bearer {one.token(user)}"}))["type"] == "connection_ack"
                await ws.subscribe("s1", SUBSCRIPTION, id=conversation)
                first = await ws.receive()
                assert first["payload"]["data"]["connectionKeyStatus"]["unlockState"] == "LOCKED"

            # Submitted to instance 2: its outbox row goes through Kafka to whichever instance's consumer
            # owns the partition, and the status through Redis to instance 1's subscribers.
            body: dict[str, Any] = {"signedPayload": payload["signedPayload"], "answers": await one.answers(payload)}
            async with httpx.AsyncClient(base_url=two, timeout=30) as client:
                response = await client.post(
                    f"/connection-keys/{payload['id']}/responses", json=body, headers=one.headers(alice)
                )
            assert response.status_code == 201, response.text
            attempt = response.json()
            assert attempt["unlockState"] == "UNLOCKED"

            for ws in (alice_ws, bob_ws):
                message = await ws.receive(timeout=30)  # the first group join on Tansu takes seconds
                status = message["payload"]["data"]["connectionKeyStatus"]
                assert (status["conversationId"], status["unlockState"]) == (conversation, "UNLOCKED")
                assert status["attemptId"] == attempt["attemptId"]
