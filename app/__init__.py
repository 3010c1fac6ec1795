"""Connection Key: one Litestar process serving GraphQL and REST, the task queue and the consumers.

``litestar run`` finds :func:`create_app` here; ``python -m app`` does the same.
"""

from __future__ import annotations

import sys

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from app.api.docs_pages import docs_render_plugins
from app.api.graphql.controller import build_graphql_controller
from app.api.rest.controllers import ConnectionKeyController, HealthController, ProfileController
from app.api.rest.dependencies import refuse_deeply_nested_body
from app.api.rest.moderation import ModerationController
from app.api.rest.problems import exception_handlers
from app.api.rest.users import UserController
from app.api.security_headers import security_headers_hook
from app.cli import ConnectionKeyCLIPlugin
from app.lifespan import services_lifespan
from app.observability import configure_logging, request_id_middleware
from app.settings import Settings, SettingsError, load_settings

__all__ = ["create_app"]
__version__ = "0.1.0"


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the application from ``settings`` (default: ``litestar.toml`` + ``CK_*`` environment).

    Invalid settings stop here with a message naming the key, before anything connects.
    """
    if settings is None:
        try:
            settings = load_settings()
        except SettingsError as exc:
            print(f"connection-key: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    configure_logging(settings.logging)
    return Litestar(
        route_handlers=[
            build_graphql_controller(settings),
            ConnectionKeyController,
            ProfileController,
            HealthController,
            ModerationController,
            UserController,
        ],
        lifespan=[services_lifespan(settings)],
        middleware=[request_id_middleware],
        exception_handlers=exception_handlers,
        before_request=refuse_deeply_nested_body,  # before any decoder recurses into a body
        plugins=[ConnectionKeyCLIPlugin()],
        request_max_body_size=settings.server.max_body_bytes,
        before_send=[security_headers_hook(settings)],
        state=State({"services": None, "settings": settings}),
        openapi_config=OpenAPIConfig(
            title="Connection Key",
            version=__version__,
            description="REST mirrors of the Connection Key GraphQL API, for backends and moderation tools.",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
            ),
            security=[{"bearer": []}],
            render_plugins=docs_render_plugins(development=settings.is_development),
        ),
        logging_config=None,  # structlog (app.observability) owns logging
        debug=False,
    )
