from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Varchar
from piccolo.columns.indexes import IndexMethod
from piccolo.engine import engine_finder

ID = "2026-12-03T17:00:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "one open key per (requester, conversation); attempts keep a digest of their request"

# Keys issued concurrently before this index existed may leave several ISSUED keys for a pair: all but
# the newest are superseded first, as a new create would have done, so the index can be built.
SUPERSEDE_DUPLICATES = """
UPDATE connection_keys SET status = 'SUPERSEDED'
WHERE status = 'ISSUED' AND EXISTS (
    SELECT 1 FROM connection_keys AS newer
    WHERE newer.requester_id = connection_keys.requester_id
      AND newer.conversation_id = connection_keys.conversation_id
      AND newer.status = 'ISSUED'
      AND (newer.issued_at > connection_keys.issued_at
           OR (newer.issued_at = connection_keys.issued_at AND newer.id > connection_keys.id))
)
"""

# Partial unique index: SQLite (3.8+) and PostgreSQL both support it, Piccolo cannot express it.
ONE_OPEN_KEY_PER_PAIR = """
CREATE UNIQUE INDEX IF NOT EXISTS connection_keys_one_open_per_pair
ON connection_keys (requester_id, conversation_id) WHERE status = 'ISSUED'
"""


async def one_open_key_per_pair():
    engine = engine_finder()
    await engine.run_ddl(SUPERSEDE_DUPLICATES)
    await engine.run_ddl(ONE_OPEN_KEY_PER_PAIR)


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="connection_key", description=DESCRIPTION)

    manager.add_column(
        table_class_name="ConnectionKeyAttempt",
        tablename="connection_key_attempts",
        column_name="request_digest",
        db_column_name="request_digest",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 64,
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_raw(one_open_key_per_pair)

    return manager
