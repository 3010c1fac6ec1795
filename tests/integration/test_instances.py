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

from app.db.tables import ConnectionKeyAttempt, ConnectionKeyEvent, Conversation, ProcessedEvent
from app.services.unlock_orchestrator import CONSUMER_GROUP
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


class Instance:
    """A ``python -m app`` process on a free port, as in production."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start it and wait until ``/ready`` says ready."""
        self.process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app",
            "--port",
            str(self.port),
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with httpx.AsyncClient(base_url=self.base, timeout=5) as client:
            async with asyncio.timeout(60):
                while True:
                    assert process.returncode is None, f"the instance exited with {process.returncode}"
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get("/ready")).json().get("status") == "ready":
                            return
                    await asyncio.sleep(0.2)

    async def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as when a machine dies."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            async with asyncio.timeout(20):
                await self.process.wait()
        except TimeoutError:
            await self.kill()


@contextlib.asynccontextmanager
async def second_instance(env: dict[str, str]) -> AsyncIterator[Instance]:
    """``python -m app`` with ``env``, ready; stopped on exit."""
    instance = Instance(env)
    try:
        await instance.start()
        yield instance
    finally:
        await instance.stop()


def _kafka_settings(kafka_server: KafkaTestServer, topic: str) -> dict[str, Any]:
    options = kafka_server.bus_options()
    return {
        "bootstrap_servers": kafka_server.bootstrap_servers,
        "topic": topic,
        "group_prefix": f"{topic}.",  # a fresh group: no member left over from another test
        "idempotent_producer": options["idempotent_producer"],
        "session_timeout_ms": options["session_timeout_ms"],
        "heartbeat_interval_ms": options["heartbeat_interval_ms"],
    }


def _instance_env(database_url: str, redis_url: str, kafka: dict[str, Any]) -> dict[str, str]:
    return {
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


@pytest.mark.asyncio
async def test_a_subscriber_on_one_instance_sees_an_unlock_submitted_on_another(
    api_factory: Callable[[Settings], Awaitable[Api]],
    database_url: str,
    redis_url: str,
    kafka_server: KafkaTestServer,
    kafka_topic: str,
) -> None:
    kafka = _kafka_settings(kafka_server, kafka_topic)
    one = await api_factory(make_settings(database_url, redis={"url": redis_url}, kafka=kafka))
    env = _instance_env(database_url, redis_url, kafka)
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
            async with httpx.AsyncClient(base_url=two.base, timeout=30) as client:
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


@pytest.mark.asyncio
async def test_killing_an_instance_mid_stream_loses_no_acknowledged_submission(
    api_factory: Callable[[Settings], Awaitable[Api]],
    database_url: str,
    redis_url: str,
    kafka_server: KafkaTestServer,
    kafka_topic: str,
) -> None:
    """Instance 2 takes submissions and is SIGKILLed while more are in flight: its committed outbox rows,
    and the events its consumers had fetched but not committed, are finished by instance 1 (and by
    instance 2 once restarted). Every conversation with a recorded attempt ends UNLOCKED, each event
    applied once."""
    kafka = _kafka_settings(kafka_server, kafka_topic)
    one = await api_factory(make_settings(database_url, redis={"url": redis_url}, kafka=kafka))
    pairs = 12
    keys: list[tuple[uuid.UUID, dict[str, Any]]] = []
    for n in range(pairs):
        requester, target = uuid.uuid4(), uuid.uuid4()
        await one.upsert_profile(requester, f"Requester {n}")
        await one.upsert_profile(target, f"Target {n}")
        keys.append((requester, await one.create_key(requester, target)))
    bodies = [{"signedPayload": payload["signedPayload"], "answers": await one.answers(payload)} for _, payload in keys]

    async def submit(client: httpx.AsyncClient, index: int) -> int:
        requester, payload = keys[index]
        response = await client.post(
            f"/connection-keys/{payload['id']}/responses", json=bodies[index], headers=one.headers(requester)
        )
        assert response.status_code == 201, response.text
        assert response.json()["unlockState"] == "UNLOCKED"
        return index

    acknowledged: set[int] = set()
    two = Instance(_instance_env(database_url, redis_url, kafka))
    try:
        await two.start()
        async with httpx.AsyncClient(base_url=two.base, timeout=30) as client:
            in_flight = [asyncio.create_task(submit(client, n)) for n in range(pairs // 2)]
            for finished in asyncio.as_completed(in_flight):
                acknowledged.add(await finished)
                if len(acknowledged) == 2:
                    break
            await two.kill()  # the rest of the first half are in flight or queued
            for outcome in await asyncio.gather(*in_flight, return_exceptions=True):
                if isinstance(outcome, int):
                    acknowledged.add(outcome)
                else:
                    assert isinstance(outcome, httpx.HTTPError), repr(outcome)
        assert len(acknowledged) >= 2

        await two.start()  # same consumer groups, a new member
        async with httpx.AsyncClient(base_url=two.base, timeout=30) as client:
            acknowledged.update(await asyncio.gather(*(submit(client, n) for n in range(pairs // 2, pairs))))
    finally:
        await two.stop()

    # A submission cut off by the kill may or may not have committed; whatever was recorded must be applied.
    attempts = await ConnectionKeyAttempt.select(ConnectionKeyAttempt.conversation_id)
    recorded = {row["conversation_id"] for row in attempts}
    expected = {uuid.UUID(keys[n][1]["conversationId"]) for n in acknowledged}
    assert expected <= recorded
    assert len(attempts) == len(recorded)  # one attempt per key, none doubled by a retry

    async def all_unlocked() -> bool:
        rows = await Conversation.select(Conversation.id, Conversation.unlock_state).where(
            Conversation.id.is_in(list(recorded))
        )
        return len(rows) == len(recorded) and all(row["unlock_state"] == "UNLOCKED" for row in rows)

    # After the kill the group waits out instance 2's session before instance 1 takes its partitions.
    await one.eventually(all_unlocked, timeout=60)
    completed = await ConnectionKeyEvent.select(ConnectionKeyEvent.event_id).where(
        ConnectionKeyEvent.event_type == "QUIZ_COMPLETED"
    )
    assert len(completed) == len(recorded)
    applied = await ProcessedEvent.count().where(
        (ProcessedEvent.consumer == CONSUMER_GROUP)
        & ProcessedEvent.event_id.is_in([row["event_id"] for row in completed])
    )
    assert applied == len(recorded)
    unlocked_events = await ConnectionKeyEvent.count().where(ConnectionKeyEvent.event_type == "CONVERSATION_UNLOCKED")
    assert unlocked_events == len(recorded)  # a redelivered event unlocked nothing twice

    async def outbox_drained() -> bool:  # the events the orchestrator wrote reach the bus too
        return await ConnectionKeyEvent.count().where(ConnectionKeyEvent.published_at.is_null()) == 0

    await one.eventually(outbox_drained, timeout=30)
