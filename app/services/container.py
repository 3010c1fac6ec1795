"""Builds every long-lived resource and use case from settings, as one async context manager."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

import structlog

from app.adapters.cache import Cache, MemoryCache, RedisCache
from app.adapters.event_bus import EventBus, MemoryEventBus
from app.adapters.pubsub import MemoryPubSub, PubSub, RedisPubSub
from app.adapters.rate_limit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from app.adapters.task_queue import TaskQueue
from app.auth import JwtVerifier
from app.db.audit_store import AuditStore
from app.db.data_keys import DataKeyStore
from app.db.device_store import DeviceStore
from app.db.engine import DATABASE_OUTAGE_ERRORS, Database
from app.db.key_store import KeyStore
from app.db.moderation_store import ModerationStore
from app.db.outbox_store import OutboxStore
from app.db.profile_store import ProfileStore
from app.db.tables import utcnow
from app.db.template_store import TemplateStore
from app.domain.contract import ConnectionKeyPayload, ConnectionKeyResult
from app.domain.signing import PayloadSigner
from app.services.admission import AdmissionGate, Admitted
from app.services.attempt_writer import AttemptWriter
from app.services.audit import AuditLog
from app.services.audit_export import AuditExporter, AuditExportLoop, archive_from_settings
from app.services.create_key import CreateConnectionKey, KeyDependencies
from app.services.encryption import FieldEncryption
from app.services.erasure import UserErasure
from app.services.key_encryption_keys import LocalKeyEncryptionKeys
from app.services.moderation import ModerationService
from app.services.notifications import CONSUMER_GROUP as NOTIFICATIONS_GROUP
from app.services.notifications import NotificationService
from app.services.outbox_relay import OutboxRelay
from app.services.profiles import ProfileService
from app.services.reconciler import Reconciler
from app.services.scoring_runner import ScoringRunner
from app.services.submit_key import SubmitConnectionKey
from app.services.template_library import TemplateLibrary
from app.services.unlock_orchestrator import CONSUMER_GROUP, UnlockOrchestrator
from app.settings import Settings
from plugins.context import PluginContext
from plugins.manager import build_plugin_manager, collect_notifiers, collect_scorers
from plugins.scorer import Scorer

__all__ = ["Services", "open_services"]

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a request handler or CLI command may use, built once per process."""

    settings: Settings
    db: Database
    cache: Cache
    limiter: RateLimiter
    pubsub: PubSub
    bus: EventBus
    queue: TaskQueue
    relay: OutboxRelay
    verifier: JwtVerifier
    scorers: dict[str, Scorer]
    templates: TemplateLibrary
    profile_store: ProfileStore
    key_store: KeyStore
    profiles: ProfileService
    create_key: Callable[..., Awaitable[ConnectionKeyPayload]]  # CreateConnectionKey, behind its admission gate
    submit_key: Callable[..., Awaitable[ConnectionKeyResult]]  # SubmitConnectionKey, likewise
    orchestrator: UnlockOrchestrator
    notifications: NotificationService
    audit: AuditLog
    encryption: FieldEncryption
    erasure: UserErasure
    moderation: ModerationService
    clock: Callable[[], datetime]


def _cache(settings: Settings) -> Cache:
    redis = settings.redis
    if not redis.url:
        return MemoryCache()
    return RedisCache(
        redis.url,
        prefix=f"{redis.key_prefix}cache:",
        timeout=redis.timeout_seconds,
        cooldown_seconds=redis.cooldown_seconds,
        claim_failure=redis.claim_failure,
    )


def _rate_limiter(settings: Settings) -> RateLimiter:
    redis = settings.redis
    if not redis.url:
        return MemoryRateLimiter()
    return RedisRateLimiter(
        redis.url,
        failure_mode=redis.rate_limit_failure,
        closed_retry_after=redis.rate_limit_closed_retry_after_seconds,
        prefix=f"{redis.key_prefix}rl:",
        timeout=redis.timeout_seconds,
        cooldown_seconds=redis.cooldown_seconds,
    )


def _pubsub(settings: Settings) -> PubSub:
    redis = settings.redis
    if not redis.url:
        return MemoryPubSub(redis.pubsub_buffer)
    return RedisPubSub(
        redis.url,
        buffer=redis.pubsub_buffer,
        prefix=f"{redis.key_prefix}ps:",
        timeout=redis.timeout_seconds,
        cooldown_seconds=redis.cooldown_seconds,
    )


def _event_bus(settings: Settings) -> EventBus:
    """Kafka when ``kafka.bootstrap_servers`` is set, else the in-process bus over the same outbox."""
    kafka = settings.kafka
    if not kafka.bootstrap_servers:
        return MemoryEventBus()
    from app.adapters.kafka_bus import DEFAULT_TRANSIENT_ERRORS, KafkaEventBus  # aiokafka loads only if used

    return KafkaEventBus(
        kafka.bootstrap_servers,
        topic=kafka.topic,
        dead_letter_topic=kafka.dead_letter_topic or None,
        client_id=kafka.client_id,
        group_prefix=kafka.group_prefix,
        partitions=kafka.partitions,
        replication_factor=kafka.replication_factor,
        create_topics=kafka.create_topics,
        idempotent_producer=kafka.idempotent_producer,
        max_attempts=kafka.max_attempts,
        poll_batch_size=kafka.poll_batch_size,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        transient_errors=(*DEFAULT_TRANSIENT_ERRORS, *DATABASE_OUTAGE_ERRORS),
    )


def _admitted(operation: str, use_case: Callable[P, Awaitable[R]], settings: Settings) -> Callable[P, Awaitable[R]]:
    """The use case behind its own admission gate (one per operation, so a flood of submits cannot
    starve creates), or bare when ``admission.enabled`` is off."""
    if not settings.admission.enabled:
        return use_case
    return Admitted(use_case, AdmissionGate.from_settings(operation, settings.admission))


async def _open_scorers(stack: contextlib.AsyncExitStack, scorers: dict[str, Scorer]) -> None:
    """Enter every scorer in use that holds resources (models, HTTP clients) before the first request;
    one object registered under several names is entered once. Scorers nothing routes to stay closed."""
    entered: set[int] = set()
    for name, scorer in scorers.items():
        if id(scorer) in entered or not isinstance(scorer, contextlib.AbstractAsyncContextManager):
            continue
        entered.add(id(scorer))
        log.info("opening scorer", scorer=name)
        await stack.enter_async_context(scorer)


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings, clock: Callable[[], datetime] = utcnow, *, background: bool = True
) -> AsyncIterator[Services]:
    """Open the database (migrating and loading templates when configured), the adapters, the task
    queue, the outbox relay and the consumers; close them in reverse order.

    ``background=False`` (CLI commands) skips the task queue workers, the relay loop and opening the
    scorers (loading models).
    """
    cache = _cache(settings)  # built now, entered below: plugins get it as their shared cache
    context = PluginContext(
        settings=settings.plugins.config,
        data_dir=Path(settings.plugins.data_dir),
        environment=settings.server.environment,
        shared_cache=cache if settings.redis.url else None,  # in memory it would only duplicate theirs
    )
    pm = build_plugin_manager(settings.plugins.enabled, notifiers=settings.notifications.notifiers)
    scorers = collect_scorers(pm, context)
    runner = ScoringRunner(scorers, settings.scoring)  # fails fast on a bad route, before connecting
    notifiers = collect_notifiers(pm, context)
    async with contextlib.AsyncExitStack() as stack:
        if background:  # CLI commands never score, so they skip loading models
            await _open_scorers(stack, {name: scorers[name] for name in sorted(runner.in_use)})
        db = Database(settings.database)
        await db.start()
        stack.push_async_callback(db.stop)
        templates = TemplateLibrary(TemplateStore(), settings.quiz.locale, settings.quiz.template_cache_seconds)
        if db.auto_migrate:
            await db.migrate()
            count = await templates.load_files(settings.quiz.templates_dir, clock)
            log.info("template library loaded", templates=count)
        cache = await stack.enter_async_context(cache)
        limiter = await stack.enter_async_context(_rate_limiter(settings))
        pubsub = await stack.enter_async_context(_pubsub(settings))
        bus = await stack.enter_async_context(_event_bus(settings))
        verifier = JwtVerifier(settings.auth, settings.moderation)
        stack.push_async_callback(verifier.aclose)
        encryption = FieldEncryption(
            LocalKeyEncryptionKeys.from_settings(settings.encryption),
            DataKeyStore(),
            clock,
            cache_seconds=settings.encryption.data_key_cache_seconds,
            cache_size=settings.encryption.data_key_cache_size,
            read_plaintext=settings.encryption.legacy_plaintext == "read",
        )
        profile_store, key_store, outbox = ProfileStore(encryption), KeyStore(encryption), OutboxStore()
        relay = OutboxRelay(
            outbox,
            bus,
            clock,
            batch_size=settings.outbox.batch_size,
            poll_seconds=settings.outbox.poll_seconds,
            max_backoff_seconds=settings.outbox.max_backoff_seconds,
            lease_seconds=settings.outbox.lease_seconds,
        )
        deps = KeyDependencies(
            settings=settings,
            db=db,
            profiles=profile_store,
            keys=key_store,
            outbox=outbox,
            cache=cache,
            limiter=limiter,
            signer=PayloadSigner(
                settings.signing.keys,
                settings.signing.active_key_id,
                settings.signing.ttl_seconds,
                retired=settings.signing.retired_keys,
            ),
            clock=clock,
            on_events_written=relay.wake,
            encryption=encryption,
        )
        audit = AuditLog(db, AuditStore(), settings.audit.digest_key.encode(), clock)
        writer = await stack.enter_async_context(
            AttemptWriter(db, key_store, outbox, deps.retry_policy, clock, relay.wake, audit=audit)
        )
        orchestrator = UnlockOrchestrator(db, profile_store, outbox, pubsub, clock, relay.wake)
        if background:  # CLI commands must not join the consumer groups
            bus.subscribe(CONSUMER_GROUP, orchestrator.handle)
        # Entered before the relay, so at shutdown the relay stops first and pushes in flight drain.
        notifications = await stack.enter_async_context(
            NotificationService(
                DeviceStore(), notifiers, settings.notifications, profiles=profile_store, processed=outbox, clock=clock
            )
        )
        if background:
            bus.subscribe(NOTIFICATIONS_GROUP, notifications.handle)
        queue = TaskQueue(settings.queue.max_size, settings.queue.workers)
        if background:
            await stack.enter_async_context(queue)
            await stack.enter_async_context(relay)
            # Entered after the relay, so at shutdown it stops first and never drains a stopped relay.
            await stack.enter_async_context(
                Reconciler(settings.outbox, outbox, profile_store, orchestrator, relay, clock)
            )
        if background and settings.audit.export_interval_seconds:
            exporter = AuditExporter(db, audit.store, archive_from_settings(settings.audit), settings.audit, clock)
            await stack.enter_async_context(AuditExportLoop(exporter, settings.audit.export_interval_seconds))
        log.info("services started", database="sqlite" if db.is_sqlite else "postgresql", scorers=sorted(scorers))
        yield Services(
            settings=settings,
            db=db,
            cache=cache,
            limiter=limiter,
            pubsub=pubsub,
            bus=bus,
            queue=queue,
            relay=relay,
            verifier=verifier,
            scorers=scorers,
            templates=templates,
            profile_store=profile_store,
            key_store=key_store,
            profiles=ProfileService(profile_store, clock, db, audit),
            create_key=_admitted("create", CreateConnectionKey(deps, templates, queue), settings),
            submit_key=_admitted("submit", SubmitConnectionKey(deps, runner, writer), settings),
            orchestrator=orchestrator,
            notifications=notifications,
            audit=audit,
            encryption=encryption,
            erasure=UserErasure(db, encryption, profile_store, key_store, DeviceStore(), cache, audit, clock),
            moderation=ModerationService(
                settings, db, ModerationStore(), key_store, profile_store, outbox, pubsub, audit, clock, relay.wake
            ),
            clock=clock,
        )
