"""Push notifications: device registration, and conversation status changes pushed through notifier plugins.

Pushes are best effort and never hold up the caller: :meth:`NotificationService.notify_status` logs and
counts every failure instead of raising, and :meth:`NotificationService.handle` (the event-bus consumer)
and :meth:`NotificationService.submit` deliver in background tasks. Retryable outcomes are retried with
exponential backoff and jitter (bounded attempts, ``Retry-After`` honoured); tokens a push service calls
dead are deleted. Tokens never reach the logs: they are identified by a short hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, Self

import msgspec
import structlog
from msgspec import Struct

from app.adapters.event_bus import TransientHandlerError
from app.db.device_store import DeviceRecord, DeviceStore
from app.db.engine import DATABASE_OUTAGE_ERRORS
from app.db.tables import utcnow
from app.domain.events import ConversationStatusChanged, EventEnvelope, EventType, decode_payload
from app.domain.quiz import UnlockState
from app.errors import ErrorCode, ServiceError
from app.settings import NotificationSettings as NotificationPolicy
from plugins.notifier import Notifier, PushMessage, PushOutcome, PushStatus

__all__ = [
    "CONSUMER_GROUP",
    "KNOWN_PLATFORMS",
    "DeliveryReport",
    "NotificationPolicy",
    "NotificationService",
    "compose_messages",
    "token_hash",
]

CONSUMER_GROUP = "push-notifications"
KNOWN_PLATFORMS = frozenset({"android", "ios"})
log = structlog.get_logger(__name__)

_TOKEN = re.compile(r"[\x21-\x7e]{8,4096}")  # visible ASCII: FCM tokens, APNs hex tokens
_NOTIFIED = {EventType.CONVERSATION_UNLOCKED, EventType.RETRY_AVAILABLE}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


class DeliveryReport(Struct, frozen=True, kw_only=True):
    """What became of one status change's pushes (counts only: no tokens, no text)."""

    messages: int = 0
    delivered: int = 0
    pruned: int = 0
    failed: int = 0
    no_notifier: int = 0
    attempts: int = 0


class NamedProfile(Protocol):
    display_name: str


class ProfileLookup(Protocol):
    """Where display names come from (:class:`app.db.profile_store.ProfileStore` fits)."""

    async def get_profile(self, user_id: uuid.UUID) -> NamedProfile | None: ...


class ProcessedEvents(Protocol):
    """Deduplication of redelivered events (:class:`app.db.outbox_store.OutboxStore` fits)."""

    async def record_processed_many(
        self, consumer: str, event_ids: Sequence[uuid.UUID], now: datetime
    ) -> set[uuid.UUID]: ...


def token_hash(token: str) -> str:
    """How logs name a device token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _clean_name(name: str | None) -> str | None:
    """A display name fit for a lock screen: no control or bidi characters, at most 40 characters."""
    if not name:
        return None
    cleaned = " ".join(_CONTROL.sub("", name).split())[:40].strip()
    return cleaned or None


def compose_messages(
    status: ConversationStatusChanged,
    devices: Iterable[DeviceRecord],
    names: Mapping[uuid.UUID, str],
    *,
    requester_id: uuid.UUID | None,
    now: datetime,
    ttl_seconds: int,
) -> list[PushMessage]:
    """The pushes for a status change (pure). UNLOCKED tells both participants; RETRY_AVAILABLE tells
    only the requester (the person who took the quiz); anything else tells no one. The texts carry the
    other person's display name at most: never answers, scores or any other profile text."""
    if status.unlock_state is UnlockState.UNLOCKED:
        recipients = set(status.participant_ids)
        event = EventType.CONVERSATION_UNLOCKED
    elif status.unlock_state is UnlockState.RETRY_AVAILABLE and requester_id in status.participant_ids:
        recipients = {requester_id}
        event = EventType.RETRY_AVAILABLE
    else:
        return []
    data = {
        "type": event.value,
        "conversationId": str(status.conversation_id),
        "unlockState": status.unlock_state.value,
    }
    if status.retry_available_at is not None:
        data["retryAvailableAt"] = status.retry_available_at.isoformat()
    messages = []
    for device in devices:
        if device.user_id not in recipients:
            continue
        other = next((p for p in status.participant_ids if p != device.user_id), None)
        name = _clean_name(names.get(other)) if other else None
        if event is EventType.CONVERSATION_UNLOCKED:
            title = "Conversation unlocked"
            body = f"You and {name} can now message each other." if name else "You can now message each other."
        else:
            later = status.retry_available_at is not None and status.retry_available_at > now
            title = "You can try again" + (" soon" if later else "")
            body = f"Take {name}'s Connection Key again" if name else "Take the Connection Key again"
            body += " when the cooldown ends." if later else " now."
        messages.append(
            PushMessage(
                token=device.token,
                platform=device.platform,
                title=title,
                body=body,
                data=dict(data),
                collapse_key=f"ck:{status.conversation_id}",
                ttl_seconds=ttl_seconds,
            )
        )
    return messages


class NotificationService:
    """Registers devices and pushes conversation status changes through notifier plugins.

    Enter it (``async with``) at start-up: it opens the notifiers that hold resources and, on exit,
    lets background deliveries finish for ``drain_seconds`` before cancelling them and closing the
    notifiers. ``counts`` tallies outcomes for metrics and ``describe()``.
    """

    def __init__(
        self,
        devices: DeviceStore,
        notifiers: Mapping[str, Notifier] | Iterable[Notifier],
        policy: NotificationPolicy | None = None,
        *,
        profiles: ProfileLookup | None = None,
        processed: ProcessedEvents | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.devices = devices
        self.notifiers = list(notifiers.values() if isinstance(notifiers, Mapping) else notifiers)
        self.policy = policy or NotificationPolicy()
        self._routes: dict[str, Notifier] = {}
        for notifier in self.notifiers:
            for platform in notifier.platforms:
                if platform in self._routes:
                    raise ValueError(f"platform {platform!r} is served by two notifiers")
                self._routes[platform] = notifier
        self.platforms = KNOWN_PLATFORMS | frozenset(self._routes)
        self._profiles = profiles
        self._processed = processed
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[DeliveryReport]] = set()
        self._stack: contextlib.AsyncExitStack | None = None
        self.counts: Counter[str] = Counter()

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            for notifier in self.notifiers:
                if isinstance(notifier, contextlib.AbstractAsyncContextManager):
                    await stack.enter_async_context(notifier)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.drain(self.policy.drain_seconds)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            stack, self._stack = self._stack, None
            if stack is not None:
                await stack.aclose()

    def describe(self) -> dict[str, Any]:
        """For ``GET /ready``: routes, open deliveries and outcome counts (no tokens, no secrets)."""
        return {
            "routes": {platform: n.name for platform, n in sorted(self._routes.items())},
            "inFlight": len(self._tasks),
            "counts": dict(sorted(self.counts.items())),
        }

    # -- devices -----------------------------------------------------------------------------------

    async def register_device(self, user_id: uuid.UUID, platform: str, token: str) -> DeviceRecord:
        """Register (or move to ``user_id``) a device token; BAD_USER_INPUT names the bad field."""
        platform = platform.strip().lower()
        token = token.strip()
        if platform not in self.platforms:
            raise ServiceError(
                ErrorCode.BAD_USER_INPUT,
                f"platform must be one of {', '.join(sorted(self.platforms))}.",
                field="platform",
            )
        if not _TOKEN.fullmatch(token):
            raise ServiceError(ErrorCode.BAD_USER_INPUT, "token is not a push token.", field="token")
        record = await self.devices.register(
            user_id, platform, token, self._clock(), max_per_user=self.policy.max_devices_per_user
        )
        log.info("device registered", user_id=str(user_id), platform=platform, token_hash=token_hash(token))
        return record

    async def unregister_device(self, user_id: uuid.UUID, token: str) -> bool:
        """Remove the user's device token; ``False`` when the user holds no such token."""
        if not _TOKEN.fullmatch(token.strip()):
            return False  # never registered; and a NUL byte or megabytes of text must not reach the database
        removed = await self.devices.unregister(token.strip(), user_id)
        log.info("device unregistered", user_id=str(user_id), token_hash=token_hash(token.strip()), removed=removed)
        return removed

    # -- status changes ----------------------------------------------------------------------------

    async def handle(self, envelopes: Sequence[EventEnvelope]) -> None:
        """Event-bus consumer (group ``push-notifications``): CONVERSATION_UNLOCKED and RETRY_AVAILABLE
        events are delivered in the background, once per event id when ``processed`` is given. Raises
        only ``TransientHandlerError`` when the database is unreachable (the bus retries the batch, so the
        pushes are sent once it is back); any other failure is logged and counted, because a push is not
        worth holding up the event stream."""
        try:
            relevant = [e for e in envelopes if e.event_type in _NOTIFIED]
            if not relevant or not self.policy.enabled:
                return
            if self._processed is not None:
                fresh = await self._processed.record_processed_many(
                    CONSUMER_GROUP, [e.event_id for e in relevant], self._clock()
                )
                relevant = [e for e in relevant if e.event_id in fresh]
            for envelope in relevant:
                status = decode_payload(envelope)
                assert isinstance(status, ConversationStatusChanged)
                self.submit(status)
        except DATABASE_OUTAGE_ERRORS as exc:
            self.counts["errors"] += 1
            log.warning("push events wait: database unreachable", error=type(exc).__name__, events=len(envelopes))
            raise TransientHandlerError("database unreachable") from exc
        except Exception as exc:  # noqa: BLE001 - logged and counted, never raised into the bus
            self.counts["errors"] += 1
            log.error("push events not handled", error=type(exc).__name__, events=len(envelopes))

    def submit(self, status: ConversationStatusChanged, requester_id: uuid.UUID | None = None) -> bool:
        """Deliver ``status`` in a background task; ``False`` (logged, counted) when ``max_in_flight``
        deliveries are already running."""
        if len(self._tasks) >= self.policy.max_in_flight:
            self.counts["dropped"] += 1
            log.warning("push dropped: too many in flight", conversation_id=str(status.conversation_id))
            return False
        task = asyncio.create_task(self.notify_status(status, requester_id), name="push-notification")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for background deliveries to finish; ``False`` when some are still running at ``timeout``."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            return not pending
        return True

    async def notify_status(
        self, status: ConversationStatusChanged, requester_id: uuid.UUID | None = None
    ) -> DeliveryReport:
        """Push ``status`` to the devices of those it concerns (see :func:`compose_messages`); returns the
        counts. ``requester_id`` (who took the quiz) is needed for RETRY_AVAILABLE; it is read from the
        event when the event carries it. Never raises (failures are logged and counted)."""
        requester_id = requester_id or getattr(status, "requester_id", None)
        try:
            if not self.policy.enabled:
                return DeliveryReport()
            if status.unlock_state is UnlockState.RETRY_AVAILABLE and requester_id is None:
                self.counts["skipped_no_requester"] += 1
                log.info("retry push skipped: requester unknown", conversation_id=str(status.conversation_id))
                return DeliveryReport()
            devices = await self.devices.tokens_for(status.participant_ids)
            names = await self._names(status.participant_ids) if devices else {}
            messages = compose_messages(
                status,
                devices,
                names,
                requester_id=requester_id,
                now=self._clock(),
                ttl_seconds=self.policy.ttl_seconds,
            )
            report = await self.deliver(messages)
        except Exception as exc:  # noqa: BLE001 - pushes never fail the caller
            self.counts["errors"] += 1
            log.error("push failed", conversation_id=str(status.conversation_id), error=type(exc).__name__)
            return DeliveryReport()
        if report.messages:
            log.info(
                "push sent",
                conversation_id=str(status.conversation_id),
                unlock_state=status.unlock_state.value,
                **msgspec.structs.asdict(report),
            )
        return report

    async def _names(self, user_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
        if self._profiles is None:
            return {}
        names = {}
        for user_id in user_ids:
            try:
                profile = await self._profiles.get_profile(user_id)
            except Exception as exc:  # noqa: BLE001 - a name is nice to have; send the generic text
                log.warning("display name unavailable", error=type(exc).__name__)
                continue
            if profile is not None:
                names[user_id] = profile.display_name
        return names

    # -- delivery ----------------------------------------------------------------------------------

    async def deliver(self, messages: Sequence[PushMessage]) -> DeliveryReport:
        """Send ``messages`` through the notifiers of their platforms: retry the retryable ones with
        backoff, delete the tokens found dead, record the last error of those that failed."""
        pending = []
        no_notifier = 0
        for message in messages:
            if message.platform in self._routes:
                pending.append(message)
            else:
                no_notifier += 1
                log.info("no notifier for platform", platform=message.platform, token_hash=token_hash(message.token))
        delivered, dead, failed = 0, set[str](), dict[str, str]()
        attempt = 0
        while pending:
            attempt += 1
            outcomes = await self._send_round(pending)
            retry: list[tuple[PushMessage, PushOutcome]] = []
            for message in pending:
                outcome = outcomes[message.token]
                self.counts[outcome.status.value] += 1
                if outcome.status is PushStatus.DELIVERED:
                    delivered += 1
                elif outcome.status is PushStatus.INVALID_TOKEN:
                    dead.add(message.token)
                elif outcome.status is PushStatus.RETRYABLE and attempt < self.policy.max_attempts:
                    retry.append((message, outcome))
                else:
                    failed[message.token] = outcome.detail or outcome.status.value
                if outcome.status is not PushStatus.DELIVERED:
                    log.info(
                        "push outcome",
                        platform=message.platform,
                        token_hash=token_hash(message.token),
                        status=outcome.status.value,
                        detail=outcome.detail,
                        attempt=attempt,
                    )
            pending = []
            if retry:
                delay, too_late = self._backoff(attempt, [outcome for _, outcome in retry])
                for message, outcome in retry:
                    if message.token in too_late:
                        failed[message.token] = f"{outcome.detail} (retry-after {outcome.retry_after:.0f}s)".strip()
                    else:
                        pending.append(message)
                if pending:
                    await self._sleep(delay)
        pruned = await self.devices.prune(dead) if dead else 0
        if failed:
            await self.devices.record_errors(failed, self._clock())
        self.counts.update(
            {k: v for k, v in (("pruned", pruned), ("undelivered", len(failed)), ("no_notifier", no_notifier)) if v}
        )
        return DeliveryReport(
            messages=len(messages),
            delivered=delivered,
            pruned=pruned,
            failed=len(failed),
            no_notifier=no_notifier,
            attempts=attempt,
        )

    def _backoff(self, attempt: int, outcomes: Sequence[PushOutcome]) -> tuple[float, set[str]]:
        """The wait before retry ``attempt + 1`` (exponential with jitter, and at least every
        ``Retry-After`` still honoured), and the tokens whose ``Retry-After`` is beyond
        ``max_backoff_seconds`` (given up on rather than retried early)."""
        cap = self.policy.max_backoff_seconds
        step = min(cap, self.policy.backoff_base_seconds * 2 ** (attempt - 1))
        delay = min(cap, step + self._rng.uniform(0, step))
        too_late = {o.token for o in outcomes if o.retry_after is not None and o.retry_after > cap}
        asked = [o.retry_after for o in outcomes if o.retry_after is not None and o.retry_after <= cap]
        return max([delay, *asked]), too_late

    async def _send_round(self, messages: Sequence[PushMessage]) -> dict[str, PushOutcome]:
        """One attempt for every message, each notifier's batch concurrently; an outcome per token."""
        batches: defaultdict[str, list[PushMessage]] = defaultdict(list)
        for message in messages:
            batches[message.platform].append(message)
        by_notifier: defaultdict[int, list[PushMessage]] = defaultdict(list)
        notifiers: dict[int, Notifier] = {}
        for platform, batch in batches.items():
            notifier = self._routes[platform]
            notifiers[id(notifier)] = notifier
            by_notifier[id(notifier)].extend(batch)
        results = await asyncio.gather(*(self._send_batch(notifiers[key], batch) for key, batch in by_notifier.items()))
        return {token: outcome for result in results for token, outcome in result.items()}

    async def _send_batch(self, notifier: Notifier, batch: Sequence[PushMessage]) -> dict[str, PushOutcome]:
        """A notifier's outcomes by token, whatever it does: an exception or timeout makes the whole batch
        retryable, a missing or foreign outcome counts as failed."""
        try:
            async with asyncio.timeout(self.policy.send_timeout_seconds):
                outcomes = await notifier.send(batch)
        except TimeoutError:
            detail = f"{notifier.name}: timed out"
            return {m.token: PushOutcome(token=m.token, status=PushStatus.RETRYABLE, detail=detail) for m in batch}
        except Exception as exc:  # noqa: BLE001 - a plugin is untrusted: its failure must not escape
            detail = f"{notifier.name}: {type(exc).__name__}"
            return {m.token: PushOutcome(token=m.token, status=PushStatus.RETRYABLE, detail=detail) for m in batch}
        wanted = {m.token for m in batch}
        by_token = {o.token: o for o in outcomes if isinstance(o, PushOutcome) and o.token in wanted}
        for token in wanted - set(by_token):
            by_token[token] = PushOutcome(token=token, status=PushStatus.FAILED, detail=f"{notifier.name}: no outcome")
        return by_token
