"""The Kafka event bus (aiokafka): what the outbox relay publishes to and the orchestrator consumes from.

Publishing: each envelope becomes one record on ``topic`` (``kafka_records``: msgspec JSON, keyed by the
conversation id, headers ``traceparent``, ``event_type``, ``schema_version``), sent with ``acks=all`` (and
an idempotent producer where the broker supports it); ``publish`` returns only when the broker has
acknowledged every record, and raises otherwise: ``BusUnavailableError`` when the broker cannot be
reached (the outbox keeps the rows and the relay retries), the broker's error for anything else.

Consuming: each ``subscribe(group, handler)`` runs one ``GroupConsumer`` task (``kafka_consumer``) in this
process while the bus is entered: manual commits after the handler returns, poison events and unreadable
records to ``dead_letter_topic`` with a ``reason`` header, order kept per partition (so per conversation).

Nothing connects at import or construction; ``__aenter__`` creates the topics if missing and starts the
producer and consumers, but a broker that is down then is not fatal: publishing raises until it is back,
the consumers keep reconnecting, and ``health()``/``ping()`` tell /ready.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Self

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    ProducerClosed,
    RequestTimedOutError,
)

from app.adapters.event_bus import BusUnavailableError, EventHandler, TransientHandlerError
from app.adapters.kafka_consumer import GroupConsumer, GroupStats, PollProcessor
from app.adapters.kafka_records import (
    DeadLetter,
    Headers,
    dead_letter_headers,
    encode_envelope,
    envelope_headers,
    record_key,
)
from app.domain.events import EventEnvelope

__all__ = ["DEFAULT_TOPIC", "DEFAULT_TRANSIENT_ERRORS", "KafkaEventBus"]

log = structlog.get_logger(__name__)

DEFAULT_TOPIC = "connection_key_events"
DEFAULT_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TransientHandlerError, ConnectionError, TimeoutError)
_TOPIC_ALREADY_EXISTS = 36


class KafkaEventBus:
    """An ``EventBus`` on a Kafka (or Kafka-protocol) broker. Handlers must be idempotent: a crash between
    a handler's success and the offset commit, a rebalance or a retried poll delivers events again."""

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        topic: str = DEFAULT_TOPIC,
        dead_letter_topic: str | None = None,
        client_id: str = "connection-key",
        partitions: int = 6,
        replication_factor: int = 1,
        create_topics: bool = True,
        idempotent_producer: bool = True,
        max_attempts: int = 5,
        retry_backoff_seconds: float = 0.2,
        max_backoff_seconds: float = 10.0,
        poll_batch_size: int = 500,
        poll_timeout_ms: int = 500,
        request_timeout_ms: int = 10_000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        shutdown_grace_seconds: float = 10.0,
        transient_errors: tuple[type[BaseException], ...] = DEFAULT_TRANSIENT_ERRORS,
        client_options: Mapping[str, Any] | None = None,
        group_prefix: str = "",
        fetch_max_wait_ms: int = 100,
    ) -> None:
        """``client_options`` go to the producer, the consumers and the admin client alike (TLS and SASL:
        ``security_protocol``, ``ssl_context``, ``sasl_mechanism``, ``sasl_plain_username``, ...)."""
        # Namespaces the consumer groups (e.g. per environment sharing one cluster).
        self._group_prefix = group_prefix
        # A broker that does not answer a waiting fetch as soon as data arrives (Tansu) adds up to this
        # much to every event's latency; Kafka answers early, so a short wait only costs idle requests.
        self._fetch_max_wait_ms = fetch_max_wait_ms
        servers = [bootstrap_servers] if isinstance(bootstrap_servers, str) else list(bootstrap_servers)
        servers = [s.strip() for server in servers for s in server.split(",") if s.strip()]
        if not servers:
            raise ValueError("bootstrap_servers is empty")
        if partitions < 1 or max_attempts < 1 or poll_batch_size < 1:
            raise ValueError("partitions, max_attempts and poll_batch_size must be at least 1")
        self._servers = servers
        self._topic = topic
        self._dead_letter_topic = dead_letter_topic or f"{topic}.dlq"
        self._client_id = client_id
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._create_topics = create_topics
        self._idempotent = idempotent_producer
        self._max_attempts = max_attempts
        self._retry_backoff = retry_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._poll_batch_size = poll_batch_size
        self._poll_timeout_ms = poll_timeout_ms
        self._request_timeout_ms = request_timeout_ms
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._shutdown_grace = shutdown_grace_seconds
        self._transient_errors = transient_errors
        self._client_options = dict(client_options or {})

        self._handlers: dict[str, EventHandler] = {}
        self._stats: dict[str, GroupStats] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._running = False
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._topics_ready = not create_topics
        self._topics_lock = asyncio.Lock()
        self._connected = False
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def dead_letter_topic(self) -> str:
        return self._dead_letter_topic

    # -- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._running:
            raise RuntimeError("KafkaEventBus is already running")
        self._stopping.clear()
        self._running = True
        try:
            await self.ensure_topics()
            await self._ready_producer()
        except BusUnavailableError as exc:
            log.warning("kafka unavailable at start; publishing will retry", error=str(exc))
        for group in self._handlers:
            self._start_group(group)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the consumers (each finishes the batch in hand and commits it; one still busy after the
        grace period is cancelled, uncommitted), then flush and stop the producer."""
        if not self._running:
            return
        self._stopping.set()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._shutdown_grace)
            for task in pending:
                log.warning("consumer did not stop in time; its batch stays uncommitted", task=task.get_name())
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=max(self._shutdown_grace, 5.0))
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error("consumer task failed", task=task.get_name(), error=repr(task.exception()))
        self._tasks.clear()
        async with self._producer_lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)
        self._running = False
        self._connected = False

    def subscribe(self, group: str, handler: EventHandler) -> None:
        """Register ``handler`` for consumer group ``group``; it runs from the next ``__aenter__`` (or at
        once if the bus is running), called with each poll's readable events in partition order."""
        if group in self._handlers:
            raise ValueError(f"consumer group {group!r} already subscribed")
        self._handlers[group] = handler
        self._stats[group] = GroupStats()
        if self._running:
            self._start_group(group)

    # -- publishing ------------------------------------------------------------------------------------

    async def publish(self, envelopes: Sequence[EventEnvelope]) -> None:
        """Send every envelope and wait for the broker's acknowledgement of all of them."""
        if not envelopes:
            return
        await self.ensure_topics()
        messages = [
            (self._topic, record_key(envelope), encode_envelope(envelope), envelope_headers(envelope))
            for envelope in envelopes
        ]
        await self._send(messages)

    async def ensure_topics(self) -> None:
        """Create the events and dead-letter topics if they are missing (once per bus)."""
        if self._topics_ready:
            return
        async with self._topics_lock:
            if self._topics_ready:
                return
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._servers,
                client_id=f"{self._client_id}-admin",
                request_timeout_ms=self._request_timeout_ms,
                **self._client_options,
            )
            try:
                await admin.start()
                response = await admin.create_topics(
                    [
                        NewTopic(name, self._partitions, self._replication_factor)
                        for name in (self._topic, self._dead_letter_topic)
                    ]
                )
            except Exception as exc:
                raise self._unavailable(exc, "cannot create topics") from exc
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
            for result in response.topic_errors:
                name, code = result[0], result[1]
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    # Not fatal: the topic may exist already (created by operations); sending will tell.
                    log.error("kafka topic not created", topic=name, error_code=code, message=result[2:])
            self._topics_ready = True

    async def _send(self, messages: list[tuple[str, bytes | None, bytes | None, Headers]]) -> None:
        producer = await self._ready_producer()
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self._request_timeout_ms / 1000 * 2 + 5):
                for topic, key, value, headers in messages:
                    futures.append(await producer.send(topic, value=value, key=key, headers=headers))
                await asyncio.wait(futures)
        except BaseException as exc:
            for future in futures:
                future.add_done_callback(_retrieve_exception)
            if not isinstance(exc, Exception):
                raise
            await self._failed(producer, exc)
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        errors = [error for error in map(_send_error, futures) if error is not None]  # retrieves them all
        if errors:
            error = errors[0]
            await self._failed(producer, error)
            translated = self._translate(error)
            if translated is error:
                raise error
            raise translated from error
        self._connected = True

    async def _send_dead_letter(self, record: ConsumerRecord, dead: DeadLetter, group: str) -> None:
        headers = dead_letter_headers(
            record.headers, dead, topic=record.topic, partition=record.partition, offset=record.offset, group=group
        )
        await self._send([(self._dead_letter_topic, record.key, record.value, headers)])

    async def _ready_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is not None:
                return self._producer
            producer = AIOKafkaProducer(
                bootstrap_servers=self._servers,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=self._idempotent,
                request_timeout_ms=self._request_timeout_ms,
                **self._client_options,
            )
            try:
                await producer.start()
            except BaseException as exc:
                await _stop_quietly(producer)
                if not isinstance(exc, Exception):
                    raise
                raise self._unavailable(exc, "cannot start the Kafka producer") from exc
            self._producer = producer
            self._connected = True
            return producer

    async def _failed(self, producer: AIOKafkaProducer, exc: BaseException) -> None:
        """After a failed send, start afresh next time: a new producer reconnects and re-reads metadata
        (and, being idempotent, gets a new producer id instead of carrying expired sequence numbers)."""
        self._record_error(exc)
        async with self._producer_lock:
            if self._producer is not producer:
                return
            self._producer = None
        await _stop_quietly(producer)

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, BusUnavailableError):
            return exc
        if _is_unavailable(exc):
            return self._unavailable(exc, "Kafka unavailable")
        return exc

    def _unavailable(self, exc: BaseException, what: str) -> BusUnavailableError:
        self._record_error(exc)
        self._connected = False
        return BusUnavailableError(f"{what} ({','.join(self._servers)}): {type(exc).__name__}: {exc}")

    def _record_error(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._last_error_at = datetime.now(UTC)

    # -- consuming -------------------------------------------------------------------------------------

    def _start_group(self, group: str) -> None:
        stats = self._stats[group]
        processor = PollProcessor(
            group=group,
            handler=self._handlers[group],
            dead_letter=self._send_dead_letter,
            max_attempts=self._max_attempts,
            backoff=self._backoff,
            transient_errors=self._transient_errors,
            stopping=self._stopping,
            stats=stats,
        )
        consumer = GroupConsumer(
            group=group,
            processor=processor,
            make_consumer=lambda: self._make_consumer(group),
            prepare=self.ensure_topics,
            poll_timeout_ms=self._poll_timeout_ms,
            max_records=self._poll_batch_size,
            backoff=self._backoff,
            stopping=self._stopping,
            stats=stats,
        )
        self._tasks[group] = asyncio.create_task(consumer.run(), name=f"kafka-consumer:{group}")

    def _make_consumer(self, group: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._servers,
            client_id=f"{self._client_id}-{group}",
            group_id=f"{self._group_prefix}{group}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._poll_batch_size,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            request_timeout_ms=max(self._request_timeout_ms, self._session_timeout_ms + 5_000),
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
            **self._client_options,
        )

    def _backoff(self, attempt: int) -> float:
        return min(self._retry_backoff * 2 ** max(attempt - 1, 0), self._max_backoff)

    # -- readiness -------------------------------------------------------------------------------------

    async def ping(self, timeout: float = 2.0) -> bool:
        """Whether the broker answers a metadata request now (for /ready)."""
        try:
            async with asyncio.timeout(timeout):
                producer = await self._ready_producer()
                await producer.client.fetch_all_metadata()
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
            self._unavailable(exc, "ping failed")
            return False
        self._connected = True
        return True

    def health(self) -> dict[str, Any]:
        """A snapshot for /ready: connection state, the last error, and each consumer group's counters."""
        return {
            "backend": "kafka",
            "connected": self._connected,
            "bootstrapServers": ",".join(self._servers),
            "topic": self._topic,
            "deadLetterTopic": self._dead_letter_topic,
            "lastError": self._last_error,
            "lastErrorAt": self._last_error_at.isoformat() if self._last_error_at else None,
            "consumers": {group: stats.as_dict() for group, stats in self._stats.items()},
        }


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, KafkaConnectionError | KafkaTimeoutError | ProducerClosed | RequestTimedOutError):
        return True
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


def _send_error(future: asyncio.Future[Any]) -> Exception | None:
    if future.cancelled():
        return ProducerClosed()
    error = future.exception()
    return error if isinstance(error, Exception) or error is None else ProducerClosed()


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception):
        await producer.stop()
