"""The whole service on Kafka: submit on SQLite or PostgreSQL, the unlock arrives through the broker."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest

from app.db.tables import ConnectionKeyEvent, Conversation
from app.settings import Settings
from tests import kafka_server as kafka_fixtures
from tests.conftest import make_settings
from tests.integration.conftest import Api
from tests.kafka_server import KafkaTestServer

kafka_server = kafka_fixtures.kafka_server
kafka_topic = kafka_fixtures.kafka_topic


@pytest.mark.asyncio
async def test_an_unlock_travels_through_kafka(
    api_factory: Callable[[Settings], Awaitable[Api]],
    database_url: str,
    kafka_server: KafkaTestServer,
    kafka_topic: str,
) -> None:
    options = kafka_server.bus_options()
    kafka = {
        "bootstrap_servers": kafka_server.bootstrap_servers,
        "topic": kafka_topic,
        "group_prefix": f"{kafka_topic}.",
        "idempotent_producer": options["idempotent_producer"],
        "session_timeout_ms": options["session_timeout_ms"],
        "heartbeat_interval_ms": options["heartbeat_interval_ms"],
    }
    api = await api_factory(make_settings(database_url, kafka=kafka))
    ready = (await api.client.get("/ready")).json()
    assert ready["checks"]["eventBus"] is True and ready["backends"]["eventBus"]["backend"] == "kafka"

    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    payload = await api.create_key(alice, bob)
    result = await api.submit(alice, payload["signedPayload"], await api.answers(payload))
    assert result["data"]["submitConnectionKey"]["passed"] is True

    async def unlocked() -> bool:
        row = await Conversation.select().where(Conversation.id == uuid.UUID(payload["conversationId"])).first().run()
        return row["unlock_state"] == "UNLOCKED"

    await api.eventually(unlocked, timeout=30.0)  # the first consumer-group join takes a few seconds

    async def all_published() -> bool:
        rows = await ConnectionKeyEvent.select(ConnectionKeyEvent.published_at).run()
        return len(rows) == 3 and all(r["published_at"] for r in rows)

    await api.eventually(all_published, timeout=10.0)
