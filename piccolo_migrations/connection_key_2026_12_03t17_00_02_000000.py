"""Outbox leases and dead letters; per-requester retry state; the moderator's lock on a conversation.

- ``connection_key_events`` gains ``lease_owner``/``lease_until`` (one relay instance publishes a row at a
  time) and ``dead_lettered_at`` (a malformed or unknown event set aside, with ``last_error``).
- ``conversations`` gains ``moderation_locked_at``/``moderation_decision_id``: a moderator's LOCK that
  holds until a moderator lifts it. The row now carries only LOCKED or UNLOCKED; each requester's retry
  state moves to ``conversation_requester_states``: each old RETRY_AVAILABLE/COOLDOWN row's state and
  its latest attempt's retry time are copied to that attempt's requester, then the row becomes LOCKED
  (the retry rules are enforced from the attempts themselves, so nobody may retry earlier than before).
- ``processed_events`` gets an index on ``processed_at`` for pruning.

Raw SQL (the same on SQLite and PostgreSQL 16, types spelled as Piccolo declares them), in one step, so
the columns exist before the data moves.
"""

import uuid
from datetime import UTC, datetime

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine.finder import engine_finder
from piccolo.querystring import QueryString

ID = "2026-12-03T17:00:02:000000"
VERSION = "1.38.0"
DESCRIPTION = "outbox leases and dead letters; per-requester retry state; moderator lock"

STATEMENTS = [
    'ALTER TABLE "connection_key_events" ADD COLUMN "lease_owner" VARCHAR(64) DEFAULT NULL',
    'ALTER TABLE "connection_key_events" ADD COLUMN "lease_until" TIMESTAMPTZ DEFAULT NULL',
    'ALTER TABLE "connection_key_events" ADD COLUMN "dead_lettered_at" TIMESTAMPTZ DEFAULT NULL',
    'CREATE INDEX "connection_key_events_dead_lettered_at" ON "connection_key_events" ("dead_lettered_at")',
    'CREATE INDEX "processed_events_processed_at" ON "processed_events" ("processed_at")',
    'ALTER TABLE "conversations" ADD COLUMN "moderation_locked_at" TIMESTAMPTZ DEFAULT NULL',
    'ALTER TABLE "conversations" ADD COLUMN "moderation_decision_id" UUID DEFAULT NULL',
    """CREATE TABLE "conversation_requester_states" (
        "id" UUID PRIMARY KEY NOT NULL,
        "conversation_id" UUID NOT NULL,
        "requester_id" UUID NOT NULL,
        "unlock_state" VARCHAR(20) NOT NULL DEFAULT 'LOCKED',
        "retry_available_at" TIMESTAMPTZ DEFAULT NULL,
        "attempt_id" UUID DEFAULT NULL,
        "updated_at" TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
    )""",
    'CREATE UNIQUE INDEX "conversation_requester_states_pair" '
    'ON "conversation_requester_states" ("conversation_id", "requester_id")',
]

# Each RETRY_AVAILABLE/COOLDOWN conversation with its latest attempt: that attempt's requester owns the
# state (and its retry time), so it is copied to them before the conversation row becomes LOCKED.
LATEST_ATTEMPTS = """
    SELECT c."id" AS "conversation_id", c."unlock_state", a."requester_id", a."id" AS "attempt_id",
           a."retry_available_at"
    FROM "conversations" c JOIN "connection_key_attempts" a ON a."conversation_id" = c."id"
    WHERE c."unlock_state" IN ('RETRY_AVAILABLE', 'COOLDOWN')
      AND NOT EXISTS (
        SELECT 1 FROM "connection_key_attempts" b
        WHERE b."conversation_id" = c."id"
          AND (b."submitted_at" > a."submitted_at" OR (b."submitted_at" = a."submitted_at" AND b."id" > a."id")))"""
INSERT_STATE = """
    INSERT INTO "conversation_requester_states"
        ("id", "conversation_id", "requester_id", "unlock_state", "retry_available_at", "attempt_id", "updated_at")
    VALUES ({}, {}, {}, {}, {}, {}, {}) ON CONFLICT ("id") DO NOTHING"""
LOCK_SHARED_ROWS = """UPDATE "conversations" SET "unlock_state" = 'LOCKED'
       WHERE "unlock_state" IN ('RETRY_AVAILABLE', 'COOLDOWN')"""


def _uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


async def move_to_leases_and_per_requester_state() -> None:
    engine = engine_finder()
    assert engine is not None
    for statement in STATEMENTS:
        await engine.run_ddl(statement)
    now = datetime.now(UTC)
    for row in await engine.run_querystring(QueryString(LATEST_ATTEMPTS)):
        conversation_id, requester_id = _uuid(row["conversation_id"]), _uuid(row["requester_id"])
        await engine.run_querystring(
            QueryString(
                INSERT_STATE,
                # requester_state_id (app.db.tables), spelled out: a migration does not import the app.
                uuid.uuid5(conversation_id, f"requester:{requester_id}"),
                conversation_id,
                requester_id,
                row["unlock_state"],
                row["retry_available_at"],
                _uuid(row["attempt_id"]),
                now,
            )
        )
    await engine.run_ddl(LOCK_SHARED_ROWS)


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="connection_key", description=DESCRIPTION)
    manager.add_raw(move_to_leases_and_per_requester_state)
    return manager
