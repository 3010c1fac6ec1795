"""For the ``piccolo`` CLI run from the repository root (e.g. ``piccolo migrations new connection_key --auto``)."""

from app.db.piccolo_conf import APP_REGISTRY, DB  # noqa: F401
