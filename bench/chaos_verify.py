"""The chaos benchmark's view of the end state: the service's database read with its own tables and
stores (profiles are sealed, so they open through ``ProfileStore`` with the service's keys, as
``bench/answer_keys.py`` opens answer keys). Benchmark use only; it only reads.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from chaos_report import AttemptRow, Snapshot

__all__ = ["StoreReader"]

T = TypeVar("T")


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _scorer_errors(breakdown: Any) -> tuple[str, ...]:
    lines = _as_json(breakdown)
    if not isinstance(lines, list):
        return ()
    return tuple(
        str(line["error"])
        for line in lines
        if isinstance(line, dict) and str(line.get("error") or "").startswith("scorer_")
    )


class StoreReader:
    """Opens the database the service uses (same settings, ``CK_DATABASE__AUTO_MIGRATE=false``) on a private
    thread and event loop, so the load generator's loop never waits on it."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = {**environ, "CK_DATABASE__AUTO_MIGRATE": "false"}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-store-reader", daemon=True)
        self._db: Any = None
        self._profiles: Any = None

    def __enter__(self) -> StoreReader:
        self._thread.start()
        self._call(self._open)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call(self._close)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def _call(self, work: Callable[[], Awaitable[T]], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(work(), self._loop).result(timeout)  # type: ignore[arg-type]

    async def _open(self) -> None:
        from app.db.data_keys import DataKeyStore
        from app.db.engine import Database
        from app.db.profile_store import ProfileStore
        from app.db.tables import utcnow
        from app.services.encryption import FieldEncryption
        from app.services.key_encryption_keys import LocalKeyEncryptionKeys
        from app.settings import load_settings

        settings = load_settings(environ=dict(self._environ))
        self._db = Database(settings.database)
        await self._db.start()
        encryption = FieldEncryption(
            LocalKeyEncryptionKeys.from_settings(settings.encryption), DataKeyStore(), utcnow, cache_seconds=0.0
        )
        self._profiles = ProfileStore(encryption)

    async def _close(self) -> None:
        if self._db is not None:
            await self._db.stop()

    # ---- the settle wait -------------------------------------------------------------------
    def pending(self) -> tuple[int, int]:
        """(recorded passing attempts whose conversation is not UNLOCKED, outbox rows not yet published)."""
        return self._call(self._pending)

    async def _pending(self) -> tuple[int, int]:
        from app.db.tables import ConnectionKeyAttempt, ConnectionKeyEvent, Conversation

        passed = await ConnectionKeyAttempt.select(ConnectionKeyAttempt.conversation_id).where(
            ConnectionKeyAttempt.passed == True  # noqa: E712 - Piccolo builds SQL from ==
        )
        wanted = {row["conversation_id"] for row in passed}
        unlocked = set()
        if wanted:
            rows = await Conversation.select(Conversation.id).where(
                Conversation.id.is_in(list(wanted)) & (Conversation.unlock_state == "UNLOCKED")
            )
            unlocked = {row["id"] for row in rows}
        unpublished = await ConnectionKeyEvent.count().where(ConnectionKeyEvent.published_at.is_null())
        return len(wanted - unlocked), unpublished

    # ---- the end state ---------------------------------------------------------------------
    def snapshot(self, profile_users: Iterable[str]) -> Snapshot:
        users = list(profile_users)
        return self._call(lambda: self._snapshot(users), timeout=600.0)

    async def _snapshot(self, profile_users: list[str]) -> Snapshot:
        from app.db.tables import ConnectionKey, ConnectionKeyAttempt, ConnectionKeyEvent, Conversation, ProcessedEvent

        snap = Snapshot()
        snap.key_ids = {str(row["id"]) for row in await ConnectionKey.select(ConnectionKey.id)}
        attempts = await ConnectionKeyAttempt.select(
            ConnectionKeyAttempt.id,
            ConnectionKeyAttempt.connection_key_id,
            ConnectionKeyAttempt.conversation_id,
            ConnectionKeyAttempt.passed,
            ConnectionKeyAttempt.submitted_at,
            ConnectionKeyAttempt.breakdown,
        )
        snap.attempts = [
            AttemptRow(
                attempt_id=str(row["id"]),
                key_id=str(row["connection_key_id"]),
                conversation_id=str(row["conversation_id"]),
                passed=bool(row["passed"]),
                submitted_at=row["submitted_at"],
                scorer_errors=_scorer_errors(row["breakdown"]),
            )
            for row in attempts
        ]
        snap.conversation_states = {
            str(row["id"]): row["unlock_state"]
            for row in await Conversation.select(Conversation.id, Conversation.unlock_state)
        }
        snap.processed_event_counts = Counter(
            (row["consumer"], str(row["event_id"]))
            for row in await ProcessedEvent.select(ProcessedEvent.consumer, ProcessedEvent.event_id)
        )
        events = await ConnectionKeyEvent.select(
            ConnectionKeyEvent.event_type,
            ConnectionKeyEvent.aggregate_id,
            ConnectionKeyEvent.payload,
            ConnectionKeyEvent.published_at,
            ConnectionKeyEvent.last_error,
        )
        for row in events:
            if row["event_type"] == "QUIZ_COMPLETED":
                payload = _as_json(row["payload"]) or {}
                snap.completed_events_per_attempt[str(payload.get("attemptId"))] += 1
            elif row["event_type"] == "CONVERSATION_UNLOCKED":
                snap.unlocked_events_per_conversation[str(row["aggregate_id"])] += 1
            if row["published_at"] is None:
                snap.unpublished_events += 1
            elif row["last_error"]:
                snap.dead_lettered += 1
        for user in profile_users:
            record = await self._profiles.get_profile(uuid.UUID(user))
            snap.profile_bios[user] = None if record is None else (record.bio or "")
        return snap
