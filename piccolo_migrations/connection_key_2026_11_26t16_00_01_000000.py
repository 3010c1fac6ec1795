"""Per-user data keys (envelope encryption) and ciphertext-sized PII columns.

Creates ``user_data_keys``. On PostgreSQL the PII columns that were ``json``/``varchar`` become ``text``
(ciphertext is not JSON and outgrows 80 characters); SQLite stores both as text already, so there is
nothing to alter. Existing rows keep their plaintext until ``litestar ck keys rotate`` seals them
(readers accept legacy plaintext meanwhile, so the upgrade needs no downtime).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import UUID, Integer, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.defaults.uuid import UUID4
from piccolo.columns.indexes import IndexMethod
from piccolo.engine.finder import engine_finder
from piccolo.engine.sqlite import SQLiteEngine

ID = "2026-11-26T16:00:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "per-user data keys; PII columns hold ciphertext"

# (table, column, default restored after the type change): every column now holding ciphertext.
TEXT_COLUMNS = [
    ("profiles", "display_name", None),
    ("profiles", "prompts", "'[]'"),
    ("profiles", "consent_preferences", "'[]'"),
    ("profiles", "demographic_segments", "'{}'"),
    ("connection_key_questions", "choices", None),
    ("connection_key_questions", "reference_texts", None),
    ("connection_key_attempts", "responses", None),
    ("connection_key_attempts", "feedback", "'[]'"),
]


async def text_columns():
    engine = engine_finder()
    if isinstance(engine, SQLiteEngine):
        return
    for table, column, default in TEXT_COLUMNS:
        # The old json default cannot be cast with the column: drop it, change the type, restore it.
        await engine.run_ddl(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" DROP DEFAULT')
        await engine.run_ddl(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE TEXT USING "{column}"::TEXT')
        if default is not None:
            await engine.run_ddl(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET DEFAULT {default}')


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="connection_key", description=DESCRIPTION
    )

    manager.add_table(
        class_name="UserDataKey",
        tablename="user_data_keys",
        schema=None,
        columns=None,
    )

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="user_id",
        db_column_name="user_id",
        column_class_name="UUID",
        column_class=UUID,
        params={
            "default": UUID4(),
            "null": False,
            "primary_key": True,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="key_id",
        db_column_name="key_id",
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

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="kek_id",
        db_column_name="kek_id",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 64,
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": True,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="wrapped_key",
        db_column_name="wrapped_key",
        column_class_name="Text",
        column_class=Text,
        params={
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

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="previous_key_id",
        db_column_name="previous_key_id",
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

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="previous_kek_id",
        db_column_name="previous_kek_id",
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

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="previous_wrapped_key",
        db_column_name="previous_wrapped_key",
        column_class_name="Text",
        column_class=Text,
        params={
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

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="version",
        db_column_name="version",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 1,
            "null": False,
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

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="created_at",
        db_column_name="created_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": TimestamptzNow(),
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": True,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="rotated_at",
        db_column_name="rotated_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
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

    manager.add_column(
        table_class_name="UserDataKey",
        tablename="user_data_keys",
        column_name="destroyed_at",
        db_column_name="destroyed_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
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

    manager.add_raw(text_columns)

    return manager
