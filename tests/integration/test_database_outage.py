"""PostgreSQL goes away while the unlock orchestrator (a Kafka consumer) is applying an event: nothing is lost,
nothing is dead-lettered. The consumer treats the outage as transient (``DATABASE_OUTAGE_ERRORS``), keeps the
offset uncommitted, retries, and applies the event once the database is back.

The app reaches the real PostgreSQL 16 (pgserver) through ``tests.tcp_proxy.TcpProxy``; cutting the proxy
drops every pooled connection and refuses new ones, as a network partition or a database restart would. The
QUIZ_COMPLETED event is fabricated for a real conversation and published with the app's own bus (so the
app's record encoding and headers): the orchestrator needs only the conversation row. A table lock taken
on a direct connection holds the orchestrator's first INSERT in the server, so the cut lands deterministically
inside its transaction: the statement in flight is lost and the rollback fails too. (That once wedged the
consumer for good: Piccolo kept the dead transaction as the task's current one; see ``Database.transaction``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.adapters.kafka_bus import KafkaEventBus
from app.db.outbox_store import new_envelope
from app.db.tables import ConnectionKeyEvent, Conversation, ProcessedEvent
from app.domain.events import EventType, QuizCompleted
from app.domain.quiz import UnlockState
from app.services.unlock_orchestrator import CONSUMER_GROUP
from app.settings import Settings
from tests import kafka_server as kafka_fixtures
from tests.conftest import _fresh_postgres_database, make_settings
from tests.integration.conftest import Api
from tests.kafka_server import KafkaTestServer
from tests.tcp_proxy import TcpProxy

kafka_server = kafka_fixtures.kafka_server
kafka_topic = kafka_fixtures.kafka_topic

OUTAGE_SECONDS = 3.0


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL database; skipped when neither pgserver nor ``CK_TEST_POSTGRES_URL`` is available."""
    if not os.environ.get("CK_TEST_POSTGRES_URL"):
        pytest.importorskip("pgserver")
    try:
        server = request.getfixturevalue("postgres_server")
        return _fresh_postgres_database(server)
    except Exception as exc:  # noqa: BLE001 - no server here: skip, as other PostgreSQL tests cannot run either
        pytest.skip(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}")


@pytest.fixture
def postgres_proxy(postgres_url: str) -> Iterator[TcpProxy]:
    """A proxy to that database's server. Request it before ``api_factory``: it then outlives the app, whose
    shutdown still needs the database."""
    with TcpProxy(_proxy_target(postgres_url)) as proxy:
        yield proxy


def _proxy_target(url: str) -> tuple[str, int] | str:
    """Where ``url``'s server listens: a Unix socket path (pgserver's ``?host=/dir``) or ``(host, port)``."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    port = int(query.get("port", [parts.port or 5432])[0])
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def _through_proxy(url: str, port: int) -> str:
    """``url`` with its server replaced by the proxy on ``127.0.0.1:port``."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in ("host", "port")]
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, urllib.parse.urlencode(query), ""))


class GroupOffsets:
    """A consumer group's committed offsets and its topic's end offsets, each summed over the partitions;
    read by a consumer that never joins the group (so it takes no partition from it)."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        self._topic = topic
        self._partitions: list[TopicPartition] = []

    async def __aenter__(self) -> GroupOffsets:
        await self._consumer.start()
        await self._consumer.topics()  # metadata for every topic
        partitions = self._consumer.partitions_for_topic(self._topic) or set()
        assert partitions, f"topic {self._topic} does not exist"
        self._partitions = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def committed(self) -> int:
        return sum([await self._consumer.committed(tp) or 0 for tp in self._partitions])

    async def end(self) -> int:
        return sum((await self._consumer.end_offsets(self._partitions)).values())


async def _dead_letter_count(bootstrap: str, topic: str) -> int:
    """Records ever written to the dead-letter ``topic``."""
    async with GroupOffsets(bootstrap, topic, f"{topic}.reader") as dead_letters:
        return await dead_letters.end()


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_a_database_outage_while_applying_an_event_loses_and_dead_letters_nothing(
    postgres_url: str,
    postgres_proxy: TcpProxy,
    api_factory: Callable[[Settings], Awaitable[Api]],
    kafka_server: KafkaTestServer,
    kafka_topic: str,
) -> None:
    """Publish a QUIZ_COMPLETED, cut PostgreSQL (by the proxy) while the orchestrator's transaction is in the
    server, watch the consumer retry for a few seconds without committing or dead-lettering, restore: the
    conversation unlocks, once."""
    async with contextlib.AsyncExitStack() as stack:
        await _outage_scenario(stack, postgres_url, postgres_proxy, api_factory, kafka_server, kafka_topic)


async def _outage_scenario(
    stack: contextlib.AsyncExitStack,
    postgres_url: str,
    proxy: TcpProxy,
    api_factory: Callable[[Settings], Awaitable[Api]],
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
    database = {"url": _through_proxy(postgres_url, proxy.port), "pool_min_size": 1, "pool_max_size": 2}
    api = await api_factory(make_settings(postgres_url, database=database, kafka=kafka))
    bus = api.services.bus
    assert isinstance(bus, KafkaEventBus)

    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.upsert_profile(alice, "Alice")
    await api.upsert_profile(bob, "Bob")
    payload = await api.create_key(alice, bob)
    conversation = uuid.UUID(payload["conversationId"])

    def group() -> dict[str, Any]:
        return bus.health()["consumers"][CONSUMER_GROUP]

    offsets = await stack.enter_async_context(
        GroupOffsets(kafka_server.bootstrap_servers, kafka_topic, f"{kafka['group_prefix']}{CONSUMER_GROUP}")
    )

    async def settled() -> bool:  # the group has joined, and applied and committed the KEY_CREATED event
        published = await ConnectionKeyEvent.count().where(ConnectionKeyEvent.published_at.is_null()) == 0
        return published and group()["assignedPartitions"] > 0 and await offsets.committed() == await offsets.end() > 0

    await api.eventually(settled, timeout=30.0)  # the first group join on Tansu takes a few seconds
    before = group()
    committed_before = await offsets.committed()
    assert before["deadLettered"] == 0

    now = datetime.now(UTC)
    event = QuizCompleted(
        attempt_id=uuid.uuid4(),
        key_id=uuid.UUID(payload["id"]),
        conversation_id=conversation,
        requester_id=alice,
        target_id=bob,
        score=0.95,
        passed=True,
        unlock_state=UnlockState.UNLOCKED,
        retry_available_at=None,
        completed_at=now,
    )
    envelope = new_envelope(EventType.QUIZ_COMPLETED, conversation, event, now)

    # Catch the orchestrator inside its transaction: a direct connection (not through the proxy) locks
    # processed_events against writes, so the event's first INSERT waits in the server ...
    direct = await asyncpg.connect(postgres_url)
    stack.push_async_callback(direct.close)
    blocker = direct.transaction()
    await blocker.start()
    await direct.execute("LOCK TABLE processed_events IN SHARE ROW EXCLUSIVE MODE")
    await bus.publish([envelope])

    async def in_flight() -> bool:
        waiting = await direct.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return waiting > 0

    await api.eventually(in_flight, timeout=15.0)
    # ... when the database goes away: the statement in flight, and every connection, are lost.
    proxy.cut()
    await blocker.rollback()
    ready = await api.client.get("/ready")
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["database"] is False

    # The consumer fails on the database, seeks back and retries, more than once, without giving up.
    failures: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OUTAGE_SECONDS
    while loop.time() < deadline:
        stats = group()
        if stats["lastErrorAt"] and stats["lastErrorAt"] != before["lastErrorAt"]:
            assert stats["lastError"].startswith("_RetryLater"), stats["lastError"]
            failures[stats["lastErrorAt"]] = stats["lastError"]
        await asyncio.sleep(0.02)
    during = group()
    assert len(failures) >= 2, f"the consumer retried {len(failures)} times: {during}"
    # The first failure is asyncpg's (the statement in flight lost, then the rollback refused), not a plain
    # ConnectionError: it was retried at once as transient only because of DATABASE_OUTAGE_ERRORS.
    first = failures[min(failures)]
    assert first.startswith(("_RetryLater: InterfaceError", "_RetryLater: ConnectionDoesNotExistError")), failures
    assert during["processed"] == before["processed"]
    assert await offsets.end() == committed_before + 1  # the event is on the topic ...
    assert await offsets.committed() == committed_before  # ... and its offset is not committed
    assert during["deadLettered"] == 0
    assert proxy.refused >= 2  # the pool kept trying to reconnect
    assert await _dead_letter_count(kafka_server.bootstrap_servers, bus.dead_letter_topic) == 0

    proxy.restore()

    async def unlocked() -> bool:
        row = await Conversation.select(Conversation.unlock_state).where(Conversation.id == conversation).first()
        return row is not None and row["unlock_state"] == UnlockState.UNLOCKED.value

    # The consumer's backoff doubles per failure (0.2 s, 0.4 s, ... 10 s at most): after a 3 s outage
    # the next retry comes within about 4 s.
    await api.eventually(unlocked, timeout=20.0)
    assert (await api.client.get("/ready")).json()["checks"]["database"] is True

    applied = await ProcessedEvent.count().where(
        (ProcessedEvent.consumer == CONSUMER_GROUP) & (ProcessedEvent.event_id == envelope.event_id)
    )
    assert applied == 1
    unlocks = await ConnectionKeyEvent.count().where(
        (ConnectionKeyEvent.event_type == EventType.CONVERSATION_UNLOCKED.value)
        & (ConnectionKeyEvent.aggregate_id == conversation)
    )
    assert unlocks == 1  # applied once: one CONVERSATION_UNLOCKED in the outbox

    after = group()
    assert after["processed"] >= before["processed"] + 1

    async def all_committed() -> bool:  # the event, and the CONVERSATION_UNLOCKED it caused, are committed
        return await offsets.committed() == await offsets.end() == committed_before + 2

    await api.eventually(all_committed, timeout=10.0)
    for name, stats in bus.health()["consumers"].items():
        assert stats["deadLettered"] == 0, (name, stats)
    assert await _dead_letter_count(kafka_server.bootstrap_servers, bus.dead_letter_topic) == 0
