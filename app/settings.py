"""Typed settings: ``litestar.toml`` overlaid with ``CK_<SECTION>__<KEY>`` environment variables.

One msgspec Struct per subsystem, each checking its own fields together in ``__post_init__`` (msgspec
then reports the section's location). Unknown keys, wrong types, bad combinations and ``CK_`` variables
that match no setting stop start-up with a message that names the offending key and where its value
came from (environment variable or file key), because a typo in production config must never silently
fall back to a default.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect
from msgspec import Meta, Struct

from app.domain.experiments import Experiment

__all__ = [
    "AdmissionSettings",
    "AuditSettings",
    "AuthSettings",
    "DatabaseSettings",
    "EncryptionSettings",
    "GraphQLSettings",
    "KafkaSettings",
    "LoggingSettings",
    "ModerationSettings",
    "NotificationSettings",
    "OutboxSettings",
    "PluginSettings",
    "QueueSettings",
    "QuizSettings",
    "RateLimitSettings",
    "RedisSettings",
    "RetrySettings",
    "ScoringSettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "SigningSettings",
    "load_settings",
]

ENV_PREFIX = "CK_"
SETTINGS_FILE_ENV = "CK_SETTINGS_FILE"
DEFAULT_SETTINGS_FILE = "litestar.toml"

PositiveInt = Annotated[int, Meta(ge=1)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Kind = Literal["COMPREHENSION", "CONSENT", "FREE_RESPONSE"]


class _Section(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base for settings sections: unknown keys are an error, values are immutable."""


class ServerSettings(_Section):
    """How the HTTP service presents itself."""

    environment: Literal["development", "test", "production"] = "development"
    """``development`` enables GraphiQL and the dev-only CLI commands (mint-token, answer-sheet)."""
    max_body_bytes: PositiveInt = 64 * 1024
    """Largest accepted request body; larger bodies get 413 before any parsing."""
    graphql_path: str = "/graphql"
    """Where the GraphQL endpoint (and GraphiQL in development) is served."""
    ws_connection_init_seconds: Annotated[float, Meta(gt=0, le=300)] = 10.0
    """How long a new WebSocket may stay silent before ``connection_init`` (then close 4408)."""
    ws_keep_alive_seconds: Annotated[float, Meta(gt=0, le=300)] = 15.0
    """Legacy ``graphql-ws`` ``ka`` interval (``graphql-transport-ws`` relies on WebSocket pings)."""
    ws_max_operations: Annotated[int, Meta(ge=1, le=1000)] = 20
    """Concurrent subscriptions per socket; one more gets an ``error`` message."""
    ws_send_timeout_seconds: Annotated[float, Meta(gt=0, le=300)] = 10.0
    """A subscriber whose socket takes longer to accept a message is closed (1013): slow readers cannot
    hold server memory."""


class DatabaseSettings(_Section):
    """Where state lives."""

    url: str = "sqlite:///var/connection_key.sqlite3"
    """``sqlite:///relative/path`` (or ``sqlite:////absolute``) or ``postgresql://...``."""
    auto_migrate: bool | None = None
    """Apply pending migrations and load templates at start-up. ``None`` means: yes for SQLite,
    no for PostgreSQL (there it is an explicit ``litestar ck migrate`` step)."""
    pool_min_size: PositiveInt = 2
    """PostgreSQL connection pool lower bound."""
    pool_max_size: PositiveInt = 10
    """PostgreSQL connection pool upper bound."""
    sqlite_busy_timeout_seconds: Annotated[float, Meta(gt=0)] = 30.0
    """How long a SQLite reader waits on a busy database before giving up (the writer waits
    ``begin_timeout_seconds`` for the write lock)."""
    sqlite_pool_size: Annotated[int, Meta(ge=1, le=64)] = 4
    """Open SQLite connections kept for reuse (each is one thread)."""
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """``FULL`` makes every acknowledged commit survive power loss; ``NORMAL`` (safe against process
    crashes in WAL mode) trades that for faster commits."""
    acquire_timeout_seconds: Annotated[float, Meta(gt=0, le=300)] = 5.0
    """Longest wait for a pooled connection (or, on SQLite, for the one writer); then UNAVAILABLE."""
    begin_timeout_seconds: Annotated[float, Meta(gt=0, le=300)] = 5.0
    """Longest wait for BEGIN (on SQLite, the write lock another process may hold); then UNAVAILABLE."""
    busy_retry_after_seconds: Annotated[int, Meta(ge=1, le=3600)] = 1
    """``Retry-After`` given with UNAVAILABLE when the database is busy or away."""
    max_pending_writes: Annotated[int, Meta(ge=1)] = 1024
    """Write transactions allowed to wait for the SQLite writer; more are refused with UNAVAILABLE."""
    ready_timeout_seconds: Annotated[float, Meta(gt=0, le=60)] = 2.0
    """``/ready`` reports the database not ready when a trivial read or an empty write transaction (on
    SQLite: in line for the writer) takes longer than this: a stuck write path answers 503 in time."""
    statement_timeout_seconds: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    """PostgreSQL: longest wait for one statement's answer, COMMIT included (asyncpg's ``command_timeout``);
    then UNAVAILABLE, and a COMMIT that timed out discards its connection. Without it a black-holed link
    holds the pool slot until TCP gives up (about 15 minutes). Keep it above the slowest real statement."""

    def __post_init__(self) -> None:
        if self.pool_min_size > self.pool_max_size:
            raise SettingsError("database.pool_min_size is larger than database.pool_max_size")
        if not self.url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise SettingsError("database.url must start with sqlite:// or postgresql://")


class AuthSettings(_Section):
    """Supabase JWT verification."""

    jwt_secret: str = "dev-only-supabase-jwt-secret-change-me-0123456789"
    """HS256 project secret. The default is refused outside development."""
    jwks_url: str | None = None
    """JWKS endpoint for ES256/RS256 tokens (e.g. ``https://<project>.supabase.co/auth/v1/.well-known/jwks.json``)."""
    jwks_file: str | None = None
    """A JWKS JSON file, for deployments that pin keys or have no route to the JWKS URL."""
    jwks_cache_seconds: PositiveInt = 600
    """How long fetched JWKS keys are trusted before a refresh."""
    algorithms: list[Literal["HS256", "ES256", "RS256"]] = msgspec.field(
        default_factory=lambda: ["HS256", "ES256", "RS256"]
    )
    """Accepted ``alg`` values. ``none`` can never be configured."""
    audience: str = "authenticated"
    """Required ``aud`` claim."""
    issuer: str | None = None
    """Required ``iss`` claim when set."""
    leeway_seconds: Annotated[int, Meta(ge=0, le=300)] = 30
    """Clock skew tolerated on ``exp``/``nbf``/``iat``."""
    service_role: str = "service_role"
    """``role`` claim value that marks backend integrations allowed to act for other users."""

    def __post_init__(self) -> None:
        if len(self.jwt_secret) < 32:
            raise SettingsError("auth.jwt_secret must be at least 32 characters")


class SigningSettings(_Section):
    """HMAC signing of quiz payloads."""

    ttl_seconds: Annotated[int, Meta(ge=10, le=3600)] = 300
    """How long a signed payload can be submitted after issue."""
    active_key_id: str = "dev-1"
    """Key id used to sign new payloads; must be present in ``keys``."""
    keys: dict[str, str] = msgspec.field(
        default_factory=lambda: {"dev-1": "dev-only-signing-key-change-me-0123456789abcdef"}
    )
    """Key id -> secret (at least 32 characters). Keep retired keys here until their payloads expire."""
    retired_keys: dict[str, Annotated[datetime, Meta(tz=True)]] = msgspec.field(default_factory=dict)
    """Key id -> when it stopped verifying (UTC, e.g. ``2026-12-01T00:00:00Z``). Payloads signed with a key
    are refused from that moment, even unexpired ones: to rotate, make another key active and retire the old
    one ``ttl_seconds`` later; to revoke a leaked key, retire it now. The active key cannot be retired."""

    def __post_init__(self) -> None:
        if self.active_key_id not in self.keys:
            raise SettingsError(f"signing.active_key_id `{self.active_key_id}` is not in signing.keys")
        for kid, secret in self.keys.items():
            if len(secret) < 32:
                raise SettingsError(f"signing.keys.{kid} must be at least 32 characters")
        for kid in self.retired_keys:
            if kid not in self.keys:
                raise SettingsError(f"signing.retired_keys.{kid} is not in signing.keys")
            if kid == self.active_key_id:
                raise SettingsError(f"signing.retired_keys.{kid} is the active key")


class QuizSettings(_Section):
    """Shape of a generated quiz."""

    comprehension_questions: Annotated[int, Meta(ge=0, le=10)] = 2
    """Comprehension items drawn from the target's prompts."""
    consent_questions: Annotated[int, Meta(ge=0, le=10)] = 2
    """Consent items drawn from the target's consent preferences."""
    free_response_questions: Annotated[int, Meta(ge=0, le=3)] = 1
    """Free-response items."""
    choices_per_question: Annotated[int, Meta(ge=2, le=6)] = 4
    """Choices in each multiple-choice item, the right one included."""
    comprehension_format: Literal["free_text", "choice"] = "free_text"
    """``free_text``: comprehension is answered in the user's own words and scored by meaning (route
    COMPREHENSION to a scorer that compares texts, e.g. ``embedding.similarity``); ``choice``: multiple
    choice (route it to ``rule.choice``)."""
    default_difficulty: Annotated[int, Meta(ge=1, le=5)] = 2
    """Difficulty used when a user has no history to adapt to."""
    locale: str = "en"
    """Template locale used when the target's locale has no templates."""
    template_cache_seconds: PositiveInt = 60
    """How long the in-process copy of the template library is reused."""
    templates_dir: str = "templates/library"
    """Seed files (``*.toml``) for ``litestar ck load-templates``; relative paths are from the project root."""


class ScoringSettings(_Section):
    """How answers become a decision."""

    pass_threshold: Fraction = 0.8
    """Weighted total needed to pass."""
    question_pass_threshold: Fraction = 0.5
    """Score at which a single question counts as passed in the breakdown."""
    weights: dict[Kind, Annotated[float, Meta(ge=0)]] = msgspec.field(
        default_factory=lambda: {"COMPREHENSION": 1.0, "CONSENT": 1.5, "FREE_RESPONSE": 0.5}
    )
    """Weight of each question kind in the total."""
    routes: dict[Kind, str] = msgspec.field(
        default_factory=lambda: {
            "COMPREHENSION": "embedding.similarity",
            "CONSENT": "rule.choice",
            "FREE_RESPONSE": "llm.rubric",
        }
    )
    """Question kind -> registered scorer name."""
    fallbacks: dict[Kind, str] = msgspec.field(
        default_factory=lambda: {"COMPREHENSION": "rule.overlap", "FREE_RESPONSE": "embedding.rubric"}
    )
    """Question kind -> scorer used when the routed one is unavailable (e.g. no LLM endpoint configured,
    circuit open), times out, raises or returns junk. The attempt records both names and the reason
    (breakdown lines' ``scorer`` and ``fallback_from``). When a question can be scored by neither, nothing
    is recorded and the submission answers ``UNAVAILABLE`` (our outage is never the user's failure)."""
    shadow: dict[Kind, list[str]] = msgspec.field(default_factory=dict)
    """Question kind -> scorers run beside the live one on every answer of that kind. Their results are
    stored on the attempt (``shadow_breakdown``) for comparison and never change the decision."""
    experiments: list[Experiment] = msgspec.field(default_factory=list)
    """A/B tests over scorers (``[[scoring.experiments]]``): per kind, users are assigned to a variant by
    a hash of the experiment salt and their id, weighted; the variant's scorer replaces the route for
    them and the variant is recorded on the attempt. At most one enabled experiment per kind."""
    timeout_seconds: Annotated[float, Meta(gt=0)] = 5.0
    """A scorer that takes longer fails that question (typed, logged), never passes it."""
    outage_retry_after_seconds: Annotated[int, Meta(ge=1, le=3600)] = 5
    """Retry-After sent with ``UNAVAILABLE`` when a question could be scored by neither its scorer nor its
    fallback (the submission was not recorded and may be sent again as it is)."""
    consent_must_all_pass: bool = True
    """Fail the attempt when any consent item is missed, whatever the total."""

    def __post_init__(self) -> None:
        live_kinds = [e.kind for e in self.experiments if e.enabled]
        for kind in sorted(set(live_kinds)):
            if live_kinds.count(kind) > 1:
                raise SettingsError(f"scoring.experiments: more than one enabled experiment for {kind}")
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise SettingsError("scoring.experiments: experiment names must be unique")


class RetrySettings(_Section):
    """What happens after a failed attempt."""

    cooldown_seconds: Annotated[int, Meta(ge=0)] = 60
    """Wait between a failed attempt and the next one."""
    max_attempts_per_day: PositiveInt = 3
    """Failed attempts per requester and conversation in a rolling 24 h window before COOLDOWN."""


class QueueSettings(_Section):
    """The in-process task queue that generates quizzes."""

    max_size: PositiveInt = 256
    """Jobs waiting beyond this are refused with UNAVAILABLE (back-pressure, not a hang)."""
    workers: PositiveInt = 4
    """Concurrent generation jobs."""
    job_timeout_seconds: Annotated[float, Meta(gt=0)] = 10.0
    """A caller waits at most this long for its job."""


class OutboxSettings(_Section):
    """The outbox relay, the reconciler and how long delivered events are kept."""

    batch_size: PositiveInt = 200
    """Events read and published per relay round."""
    poll_seconds: Annotated[float, Meta(gt=0, le=300)] = 1.0
    """How often the relay looks for events written by other processes (it is also woken on commit)."""
    max_backoff_seconds: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    """Longest wait between retries while the database or the broker is away."""
    lease_seconds: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    """How long an instance's claim on a batch of outbox rows lasts before another instance may take it."""
    reconcile_interval_seconds: Annotated[float, Meta(ge=0, le=86400)] = 30.0
    """How often the reconciler runs (0: never)."""
    republish_after_seconds: Annotated[float, Meta(gt=0, le=86400)] = 60.0
    """An unpublished outbox row older than this is republished by the reconciler."""
    retention_days: Annotated[float, Meta(gt=0, le=3650)] = 7.0
    """Published events and processed-event records older than this are pruned."""


class AdmissionSettings(_Section):
    """Admission control: refuse new work at once when it would wait too long, so accepted work stays fast."""

    enabled: bool = True
    """Off: every request is queued, however long the wait."""
    max_wait_seconds: Annotated[float, Meta(gt=0, le=60)] = 2.0
    """Budget for the expected wait of a new create or submit; beyond it: UNAVAILABLE with Retry-After."""
    concurrency: PositiveInt = 16
    """Creates (and, separately, submits) running at once; the rest wait in line, first come first
    served. Scoring runs on the request path, so more in flight only stretches each one's time."""
    max_queued: PositiveInt = 256
    """Hard bound on each operation's waiting line, whatever the estimate says (it has nothing to go on
    before the first request completes); beyond it: UNAVAILABLE with Retry-After."""
    ewma_alpha: Annotated[float, Meta(gt=0, le=1)] = 0.2
    """Weight of the newest completed request in the moving average of service time (1: only the last)."""


class RateLimitSettings(_Section):
    """Request limits, kept in this process's memory, or in Redis (shared by every instance) when
    ``redis.url`` is set."""

    enabled: bool = True
    """Turn all limits off (benchmarks, trusted backends)."""
    create_per_user_per_minute: PositiveInt = 30
    """createConnectionKey calls per requester per minute."""
    create_per_target_per_minute: PositiveInt = 10
    """createConnectionKey calls per requester and target per minute."""
    submit_per_user_per_minute: PositiveInt = 30
    """submitConnectionKey calls per requester per minute."""
    create_per_ip_per_minute: PositiveInt = 120
    """createConnectionKey calls per client address per minute (not applied to service-role callers,
    whose one address speaks for many users). Behind a proxy run uvicorn with ``--proxy-headers``."""
    submit_per_ip_per_minute: PositiveInt = 120
    """submitConnectionKey calls per client address per minute (same exemption)."""


class PluginSettings(_Section):
    """Which plugins load, and their own settings."""

    enabled: list[str] | None = None
    """Entry-point names to load; ``None`` loads every installed plugin."""
    data_dir: str = "var"
    """Where plugins may write files (the embedding plugin keeps its ONNX models in ``<data_dir>/models``)."""
    config: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """Each plugin's settings table, ``[plugins.config.<name>]``, validated by the plugin at start-up.
    One value can be set by environment: ``CK_PLUGINS__CONFIG__LLM_RUBRIC__BASE_URL=...``."""


class RedisSettings(_Section):
    """Rate limits, the quiz cache, single-use claims and subscription fan-out across instances. Without
    ``url`` all of them live in this process's memory (one instance only)."""

    url: str = ""
    """``redis://[:password@]host:6379/0`` (or ``rediss://``); empty: in-memory adapters."""
    key_prefix: str = "ck:"
    """Prefix of every key and channel (``ck:cache:``, ``ck:rl:``, ``ck:ps:``)."""
    timeout_seconds: Annotated[float, Meta(gt=0)] = 0.5
    """Connect, read and write limit per command; a slow Redis never holds a request longer."""
    cooldown_seconds: Annotated[float, Meta(ge=0)] = 1.0
    """After a failure Redis is skipped this long, so an outage does not cost a timeout per request."""
    rate_limit_failure: Literal["open", "closed"] = "open"
    """While Redis is unreachable: ``open`` lets requests through unlimited, ``closed`` refuses them with
    RATE_LIMITED and ``retryAfter`` = ``rate_limit_closed_retry_after_seconds``."""
    rate_limit_closed_retry_after_seconds: Annotated[float, Meta(gt=0)] = 1.0
    """``retryAfter`` of the RATE_LIMITED answer given while Redis is unreachable and limits fail closed."""
    claim_failure: Literal["open", "closed"] = "open"
    """Single-use claims (a replayed payload is refused before scoring) while Redis is unreachable: ``open``
    claims per instance (the default: the database enforces single use either way, so only the early
    refusal weakens), ``closed`` answers UNAVAILABLE (try again)."""
    pubsub_buffer: PositiveInt = 64
    """Messages a subscriber may fall behind before it is dropped (its socket closes with 1013)."""


class KafkaSettings(_Section):
    """The event bus. Without ``bootstrap_servers`` events go through the in-process bus (same outbox)."""

    bootstrap_servers: str = ""
    """``host:port[,host:port...]``; empty: the in-process event bus."""
    topic: str = "connection_key_events"
    """Every outbox event, keyed by conversation id (so per-conversation order holds)."""
    dead_letter_topic: str = ""
    """Events a consumer could not read or apply after ``max_attempts``; empty means ``<topic>.dlq``."""
    client_id: str = "connection-key"
    """Client id the producer and consumers report to the broker (its logs and quotas name it)."""
    group_prefix: str = ""
    """Prepended to the consumer group names (``unlock``, ``push-notifications``): environments sharing
    a cluster keep their own offsets."""
    partitions: PositiveInt = 6
    """Used when the service creates the topics (``create_topics``)."""
    replication_factor: PositiveInt = 1
    """1 for a single broker; 3 in production."""
    create_topics: bool = True
    """Create missing topics at start (off where topics are managed elsewhere)."""
    idempotent_producer: bool = True
    """Kafka's idempotent producer with acks=all. Off only for brokers that refuse it (Tansu 0.6)."""
    max_attempts: PositiveInt = 5
    """Tries of a failing event before it goes to the dead-letter topic (broker or database outages never count)."""
    poll_batch_size: PositiveInt = 500
    """Records one poll hands the consumer: the orchestrator applies them set-based."""
    fetch_max_wait_ms: Annotated[int, Meta(ge=1, le=10_000)] = 100
    """Longest a consumer fetch waits on the broker when there is nothing new. Kafka answers as soon as
    data arrives; a broker that does not (Tansu appeared not to: bench/RESULTS.md) adds up to this much per event."""
    session_timeout_ms: Annotated[int, Meta(ge=1000)] = 10_000
    """A consumer silent this long is dropped from its group and its partitions go to the others."""
    heartbeat_interval_ms: Annotated[int, Meta(ge=100)] = 3_000
    """How often a consumer tells its group it is alive; well below ``session_timeout_ms``."""


class NotificationSettings(_Section):
    """Push notifications on unlock and on retry available (``[notifications]``)."""

    enabled: bool = True
    """``false`` sends nothing (devices can still register)."""
    max_attempts: Annotated[int, Meta(ge=1, le=10)] = 4
    """Sends per message, the first included; retryable outcomes are retried until then."""
    backoff_base_seconds: Annotated[float, Meta(ge=0, le=60)] = 0.5
    """Wait before the first retry; it doubles per retry, plus random jitter of up to the same amount."""
    max_backoff_seconds: Annotated[float, Meta(ge=0, le=600)] = 30.0
    """Cap on any single wait. A ``Retry-After`` longer than this ends the retries."""
    send_timeout_seconds: Annotated[float, Meta(gt=0, le=300)] = 15.0
    """Limit on one notifier ``send`` call; past it its messages count as retryable."""
    max_in_flight: Annotated[int, Meta(ge=1)] = 256
    """Status changes being delivered in the background at once; more are dropped (logged and counted),
    so a push outage cannot pile up tasks."""
    max_devices_per_user: Annotated[int, Meta(ge=1, le=100)] = 10
    """Registering more removes the user's least recently registered devices."""
    ttl_seconds: Annotated[int, Meta(ge=0, le=2_419_200)] = 86_400
    """How long push services keep trying to reach an offline device."""
    drain_seconds: Annotated[float, Meta(ge=0, le=60)] = 5.0
    """At shutdown, how long in-flight deliveries may finish before they are cancelled."""
    notifiers: list[str] | None = None
    """Notifier entry points to load (``connection_key.notifiers``: ``fcm``, ``apns``); unset loads all.
    Each registers only when its ``[plugins.config.<name>]`` table is filled in."""


DEV_ENCRYPTION_KEY = "ZGV2LW9ubHktZW5jcnlwdGlvbi1rZWstY2hhbmdlISE="  # base64("dev-only-encryption-kek-change!!")


class EncryptionSettings(_Section):
    """``[encryption]``: per-field envelope encryption of PII.

    Each user's PII is sealed (AES-256-GCM) with that user's own data key; data keys are stored wrapped
    by a key-encryption key (KEK) named here. ``litestar ck keys rotate`` re-wraps every data key under
    ``active_key_id``; only after it finishes may the old KEK be removed from ``keys``/``key_file``."""

    active_key_id: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] = "dev-kek-1"
    """KEK that wraps new and rotated data keys; must be in ``keys`` or ``key_file``."""
    keys: dict[str, str] = msgspec.field(default_factory=lambda: {"dev-kek-1": DEV_ENCRYPTION_KEY})
    """KEK id -> base64 of 32 random bytes (``openssl rand -base64 32``). Keep a retired KEK until
    ``ck keys status`` shows no data key under it. By environment: ``CK_ENCRYPTION__KEYS='{"k2": "..."}'``.
    The development default is refused in production."""
    key_file: str | None = None
    """A JSON (``{"id": "base64", ...}``) or TOML (``id = "base64"``) file of further KEKs, merged over
    ``keys`` (e.g. a mounted secret). Read at start-up."""
    data_key_cache_seconds: Annotated[float, Meta(ge=0, le=3600)] = 60.0
    """How long an unwrapped data key is reused in this process. Erasure evicts it here at once; other
    instances may still decrypt that user's values for up to this long (``0`` disables the cache)."""
    data_key_cache_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    """Most unwrapped data keys kept in memory (least recently used go first)."""
    legacy_plaintext: Literal["read", "refuse"] = "read"
    """What a read does with a value stored before encryption existed (no ``ck1.`` prefix): ``read``
    returns it as it is, so an upgraded database keeps working until ``ck keys rotate`` seals it;
    ``refuse`` treats it as tampering (someone with write access planting plaintext). Set ``refuse``
    once ``ck keys status`` reports no legacy plaintext left, and on every new installation."""

    def __post_init__(self) -> None:
        # Every KEK (``keys`` and ``key_file``) must decode to 32 bytes and the active one must exist.
        from app.services.key_encryption_keys import KeyMaterialError, load_kek_material

        try:
            material = load_kek_material(self)
        except KeyMaterialError as exc:
            raise SettingsError(f"encryption: {exc}") from None
        if self.active_key_id not in material:
            raise SettingsError(
                f"encryption.active_key_id `{self.active_key_id}` is not in encryption.keys or key_file"
            )


class AuditSettings(_Section):
    """``[audit]``: the hash-chained audit log and its sealed-segment export."""

    digest_key: str = "dev-only-audit-digest-key-change-me-0123456789"
    """HMAC-SHA256 key of the change digests (at least 32 characters; the default is refused in
    production). Without it nobody can test guesses of the audited values against the digests. Keep it
    for as long as digests may need checking."""
    retention_days: Annotated[int, Meta(ge=1)] = 400
    """Object Lock (COMPLIANCE) retention of exported segments; below 365 is refused at start-up."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (e.g. MinIO, a test server); unset: AWS S3 for ``s3_region``."""
    s3_bucket: str = ""
    """Bucket created with Object Lock enabled; export refuses any other. Empty: export off. ``verify
    --against-archive`` reads only this bucket: a segment recorded in another one is a mismatch."""
    s3_region: str = "us-east-1"
    """Region of the bucket. Credentials come from the standard AWS chain (env, profile, role), never here."""
    s3_prefix: str = "audit/"
    """Key prefix of segment objects (``<prefix>segments/<first>-<last>.jsonl`` and ``.manifest.json``)."""
    segment_entries: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    """Entries per sealed segment; a segment is sealed only once full (or by ``ck audit export --partial``)."""
    export_interval_seconds: Annotated[int, Meta(ge=0)] = 0
    """``0``: export only by ``litestar ck audit export``; above 0: the app exports full segments this often.
    One export runs at a time (a PostgreSQL advisory lock across instances and the CLI); a round that
    finds another running is skipped."""
    verify_batch_size: Annotated[int, Meta(ge=1, le=100_000)] = 1_000
    """Entries read per query when verifying or exporting the chain."""

    def __post_init__(self) -> None:
        if self.retention_days < 365:
            raise SettingsError("audit.retention_days must be at least 365 (audit segments are kept a year)")
        if len(self.digest_key) < 32:
            raise SettingsError("audit.digest_key must be at least 32 characters")
        if self.export_interval_seconds and not self.s3_bucket:
            raise SettingsError("audit.export_interval_seconds is set but audit.s3_bucket is empty")


class ModerationSettings(_Section):
    """``[moderation]``: who counts as a moderator and what the moderation API allows."""

    roles_claim: Annotated[str, Meta(min_length=1, max_length=200)] = "app_metadata.roles"
    """Dotted path of the JWT claim holding the caller's roles (a list of strings). Supabase keeps it in
    ``app_metadata``, which only the server can write; never point it at ``user_metadata``, which users
    edit themselves."""
    moderator_role: Annotated[str, Meta(min_length=1, max_length=100)] = "moderator"
    """Role (in ``roles_claim``) that grants the moderation API. A service-role token is no moderator
    unless it carries this role too."""
    page_size: Annotated[int, Meta(ge=1, le=500)] = 50
    """Attempts per page of ``GET /moderation/attempts`` when ``limit`` is not given."""
    max_page_size: Annotated[int, Meta(ge=1, le=500)] = 200
    """Largest ``limit`` a caller may ask for."""
    max_reason_chars: Annotated[int, Meta(ge=10, le=10_000)] = 2000
    """Longest reason an override may carry (it is stored, never logged)."""

    def __post_init__(self) -> None:
        if any(not part.strip() for part in self.roles_claim.split(".")):
            raise SettingsError("moderation.roles_claim must be a dotted claim path without empty parts")
        if self.page_size > self.max_page_size:
            raise SettingsError("moderation.page_size is larger than moderation.max_page_size")


class GraphQLSettings(_Section):
    """``[graphql]``: abuse limits of the GraphQL endpoint.

    Every limit is checked while the document is parsed or validated, before any resolver runs, over
    HTTP and WebSocket alike; a refusal is a ``BAD_USER_INPUT`` error naming the ``limit``."""

    max_depth: Annotated[int, Meta(ge=1, le=100)] = 8
    """Deepest field nesting of an operation (introspection fields not counted)."""
    max_aliases: Annotated[int, Meta(ge=0, le=1000)] = 10
    """Aliased fields in one document: aliases are how one request repeats an expensive mutation."""
    max_tokens: Annotated[int, Meta(ge=10, le=100_000)] = 2000
    """Lexical tokens in one document; parsing stops beyond this, so a huge query costs little."""
    max_complexity: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000
    """Estimated cost of an operation: each field costs 1 plus its selections, multiplied by
    ``list_cost_factor`` when it returns a list."""
    list_cost_factor: Annotated[int, Meta(ge=1, le=1000)] = 10
    """How many items a list field is assumed to return when estimating cost."""
    introspection: bool | None = None
    """Answer ``__schema``/``__type`` queries. ``None``: on outside production, off in production."""


class LoggingSettings(_Section):
    """structlog output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Minimum level written."""
    json: bool = True
    """JSON lines (production) or coloured console output."""


class Settings(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """All settings, one section per subsystem."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    signing: SigningSettings = msgspec.field(default_factory=SigningSettings)
    quiz: QuizSettings = msgspec.field(default_factory=QuizSettings)
    scoring: ScoringSettings = msgspec.field(default_factory=ScoringSettings)
    retry: RetrySettings = msgspec.field(default_factory=RetrySettings)
    queue: QueueSettings = msgspec.field(default_factory=QueueSettings)
    outbox: OutboxSettings = msgspec.field(default_factory=OutboxSettings)
    admission: AdmissionSettings = msgspec.field(default_factory=AdmissionSettings)
    rate_limit: RateLimitSettings = msgspec.field(default_factory=RateLimitSettings)
    plugins: PluginSettings = msgspec.field(default_factory=PluginSettings)
    notifications: NotificationSettings = msgspec.field(default_factory=NotificationSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    encryption: EncryptionSettings = msgspec.field(default_factory=EncryptionSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    moderation: ModerationSettings = msgspec.field(default_factory=ModerationSettings)
    graphql: GraphQLSettings = msgspec.field(default_factory=GraphQLSettings)

    @property
    def is_development(self) -> bool:
        return self.server.environment == "development"


class SettingsError(ValueError):
    """Raised when settings cannot be loaded; the message names the offending key."""


def _is_collection(section: str, key: str) -> bool:
    """Whether settings field ``section.key`` holds a list or table (so its env value is JSON)."""
    for field in msgspec.inspect.type_info(Settings).fields:  # type: ignore[attr-defined]
        if field.name == section and isinstance(field.type, msgspec.inspect.StructType):
            for inner in field.type.fields:
                if inner.name == key:
                    kinds = inner.type.types if isinstance(inner.type, msgspec.inspect.UnionType) else (inner.type,)
                    return any(isinstance(k, msgspec.inspect.ListType | msgspec.inspect.DictType) for k in kinds)
    return False


def _env_value(section: str, key: str, raw: str) -> Any:
    # Lists and tables come as JSON; scalars stay strings (a secret may well start with "{") and
    # msgspec's lax conversion turns "30" into 30 and "true" into True against the field's type.
    if raw.strip().lower() in ("null", "none"):
        return None
    if _is_collection(section, key):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"not valid JSON: {exc}") from exc
    return raw


# Variables are matched on the exact name, never a prefix: a typo in any other CK_ name stops start-up.
NON_SETTING_VARIABLES = frozenset(
    {
        SETTINGS_FILE_ENV,  # which settings file to read
        "CK_LLM_API_KEY",  # the LLM rubric's API key: the default of plugins.config.llm_rubric.api_key_env
        "CK_TEST_POSTGRES_URL",  # the test suite's externally run servers (tests/conftest.py, bench/chaos.py)
        "CK_TEST_REDIS_URL",
        "CK_TEST_KAFKA_BOOTSTRAP",
        "CK_TEST_KAFKA_IDEMPOTENT",
        "CK_TEST_CHROMIUM",  # the browser tests' chromium binary
    }
)
"""``CK_`` variables read directly (``os.environ``) rather than through settings: allowed beside the
``CK_<SECTION>__<KEY>`` ones. Add a name here when code starts reading one."""

# Where each value came from, by settings path: the environment variable's name, or None for the file.
_Origins = dict[tuple[str, ...], str | None]


def _overlay_env(data: dict[str, Any], environ: dict[str, str], origins: _Origins) -> dict[str, Any]:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_VARIABLES or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        section, key = section.lower(), key.lower()
        key, *path = key.split("__")
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise SettingsError(f"settings key `{section}` is not a section (from {name})")
        origins[(section, key, *path)] = name
        if path:
            # Deeper paths address one entry of a table field (plugin settings): a plain string that
            # the owner converts against its own schema.
            if not _is_collection(section, key):
                raise SettingsError(f"{name}: `{section}.{key}` is not a table")
            for part in (key, *path[:-1]):
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise SettingsError(f"{name}: `{part}` is not a table")
            target[path[-1]] = None if raw.strip().lower() in ("null", "none") else raw
            continue
        try:
            target[key] = _env_value(section, key, raw)
        except SettingsError as exc:
            raise SettingsError(f"{name}: {exc}") from exc
    return data


def _named_by_plugins(data: dict[str, Any]) -> set[str]:
    """Variables a plugin is told to read (``api_key_env = "CK_..."``): allowed like the built-in names."""
    config = data.get("plugins", {}).get("config", {}) if isinstance(data.get("plugins"), dict) else {}
    return {
        value
        for table in (config.values() if isinstance(config, dict) else ())
        if isinstance(table, dict)
        for key, value in table.items()
        if key.endswith("_env") and isinstance(value, str)
    }


def _unknown_variables(environ: dict[str, str], data: dict[str, Any]) -> list[str]:
    """One line per ``CK_`` variable that matches no setting (``CK_DATABASE_URL``, ``CK_DATABSE__URL``):
    such a typo would otherwise leave the default in force without a word."""
    sections = {field.name: field.type for field in msgspec.structs.fields(Settings)}
    known = {f"{ENV_PREFIX}{s}__{k}".upper() for s, t in sections.items() for k in t.__struct_fields__}
    allowed = NON_SETTING_VARIABLES | _named_by_plugins(data)
    problems = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in allowed:
            continue
        section, separator, rest = name[len(ENV_PREFIX) :].lower().partition("__")
        key = rest.split("__")[0]
        if not separator:
            problem = f"{name} names no setting (settings variables are CK_<SECTION>__<KEY>, two underscores)"
        elif section not in sections:
            problem = f"{name}: there is no settings section `{section}`"
        elif key not in sections[section].__struct_fields__:
            problem = f"{name}: `{section}.{key}` is no setting"
        else:
            continue
        guess = difflib.get_close_matches(f"{ENV_PREFIX}{section}__{key}".upper(), known, n=1, cutoff=0.8)
        if not guess and not separator:
            guess = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
        problems.append(problem + (f"; did you mean {guess[0]}?" if guess else ""))
    return problems


def _file_origins(data: dict[str, Any]) -> _Origins:
    origins: _Origins = {}
    for section, value in data.items():
        if isinstance(value, dict):
            origins.update({(section, key): None for key in value})
        else:
            origins[(section,)] = None
    return origins


_LOCATION = re.compile(r"`\$([^`]*)`$")
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")


def _sources(message: str, origins: _Origins, file: Path) -> str:
    """Where the value behind a msgspec error came from: ``environment variable CK_...`` or the file
    and key. An error at a whole section (its ``__post_init__``) names every source that set a key in it."""
    match = _LOCATION.search(message)
    if match is None:
        return ""
    path = tuple(part for part in match.group(1).split("[", 1)[0].split(".") if part)
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        path += (unknown.group(1),)
    covering = [p for p in origins if path[: len(p)] == p]
    if covering:
        chosen = [max(covering, key=len)]
    elif path:
        chosen = sorted(p for p in origins if p[: len(path)] == path)
    else:
        chosen = []
    variables = [origins[p] for p in chosen if origins[p] is not None]
    in_file = [p for p in chosen if origins[p] is None]
    parts = [f"environment variable {name}" for name in variables]
    if len(in_file) == 1:
        parts.append(f"`{'.'.join(in_file[0])}` in {file}")
    elif in_file:
        parts.append(f"`[{'.'.join(path)}]` in {file}")
    return f" (from {' and '.join(parts)})" if parts else ""


def _validate(settings: Settings) -> None:
    """Checks that need two sections: production (``server.environment``) refuses the development
    defaults of the others. A section's ``__post_init__`` cannot see ``[server]``, and a whole
    ``Settings`` stays constructible in production so tests can build one piece by piece; so these run
    here, when settings are loaded for real."""
    if settings.server.environment != "production":
        return
    defaults = Settings()
    if settings.auth.jwt_secret == defaults.auth.jwt_secret:
        raise SettingsError("auth.jwt_secret still has the development default in production")
    if set(settings.signing.keys.values()) & set(defaults.signing.keys.values()):
        raise SettingsError("signing.keys still holds the development default in production")
    _validate_encryption(settings)
    _validate_audit(settings)


def _validate_encryption(settings: Settings) -> None:
    """Production holds no development KEK (in ``keys`` or ``key_file``)."""
    from app.services.key_encryption_keys import load_kek_material

    if settings.server.environment == "production" and DEV_ENCRYPTION_KEY.encode() in {
        base64.b64encode(secret) for secret in load_kek_material(settings.encryption).values()
    }:
        raise SettingsError("encryption.keys still holds the development default in production")


def _validate_audit(settings: Settings) -> None:
    """Production does not keep the development audit digest key."""
    if settings.server.environment == "production" and settings.audit.digest_key == AuditSettings().digest_key:
        raise SettingsError("audit.digest_key still has the development default in production")


def load_settings(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (``CK_SETTINGS_FILE`` or ``./litestar.toml``; absent is fine), overlay
    ``CK_<SECTION>__<KEY>`` variables and validate. Raises :class:`SettingsError` naming the key and
    where its value came from (the environment variable, or the file)."""
    environ = dict(os.environ if environ is None else environ)
    file = Path(path or environ.get(SETTINGS_FILE_ENV) or DEFAULT_SETTINGS_FILE)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{file}: {exc}") from exc
    elif path is not None or SETTINGS_FILE_ENV in environ:
        raise SettingsError(f"settings file {file} does not exist")
    origins = _file_origins(data)
    data = _overlay_env(data, environ, origins)
    if unknown := _unknown_variables(environ, data):
        raise SettingsError("environment variables that match no setting: " + "; ".join(unknown))
    try:
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid settings: {exc}{_sources(str(exc), origins, file)}") from exc
    _validate(settings)
    return settings
