from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import JSON
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-26T12:45:54:936097"
VERSION = "1.38.0"
DESCRIPTION = "scorer references, shadow breakdown, experiments"


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="connection_key", description=DESCRIPTION
    )

    manager.add_column(
        table_class_name="ConnectionKeyQuestion",
        tablename="connection_key_questions",
        column_name="reference_texts",
        db_column_name="reference_texts",
        column_class_name="JSON",
        column_class=JSON,
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
        table_class_name="ConnectionKeyAttempt",
        tablename="connection_key_attempts",
        column_name="experiments",
        db_column_name="experiments",
        column_class_name="JSON",
        column_class=JSON,
        params={
            "default": "{}",
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
        table_class_name="ConnectionKeyAttempt",
        tablename="connection_key_attempts",
        column_name="shadow_breakdown",
        db_column_name="shadow_breakdown",
        column_class_name="JSON",
        column_class=JSON,
        params={
            "default": "[]",
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

    return manager
