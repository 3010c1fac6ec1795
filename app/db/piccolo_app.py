"""Piccolo app config: the tables and where their migrations live (``piccolo_migrations/``)."""

from pathlib import Path

from piccolo.conf.apps import AppConfig

from app.db.tables import ALL_TABLES

APP_CONFIG = AppConfig(
    app_name="connection_key",
    migrations_folder_path=str(Path(__file__).resolve().parents[2] / "piccolo_migrations"),
    table_classes=list(ALL_TABLES),
    migration_dependencies=[],
    commands=[],
)
