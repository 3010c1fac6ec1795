"""Piccolo configuration module (``PICCOLO_CONF=app.db.piccolo_conf``).

``DB`` is the engine the settings name; :func:`app.db.engine.bind_engine` replaces it at run time, so
Piccolo's migration machinery and our tables always use the same engine.
"""

from piccolo.conf.apps import AppRegistry

from app.db.engine import engine_from_url
from app.settings import load_settings

DB = engine_from_url(load_settings().database)
APP_REGISTRY = AppRegistry(apps=["app.db.piccolo_app"])
