"""GraphiQL and the OpenAPI pages (Redoc, Swagger UI), every script, stylesheet and font served by the service.

The stock pages (Strawberry's GraphiQL template, Litestar's render plugins) load React, GraphiQL, Redoc and
Swagger UI from unpkg/jsDelivr/cdn.redoc.ly and start them with inline scripts: offline they stay blank, and
the inline code would need ``'unsafe-inline'``. These pages carry no inline script or style: each loads the
vendored bundles from ``app/api/static/`` (versions and origins in its README, each licence beside its files)
and a small start-up script of ours from ``static/pages/``, so :data:`app.api.security_headers.DOCS_CSP` can
allow ``'self'`` alone. The assets are served under the OpenAPI router (``/schema/static/...``), in
development only, like GraphiQL; a production deployment answers these pages under the strict API policy.

Served: Redoc at ``/schema`` and ``/schema/redoc``, Swagger UI at ``/schema/swagger``, the document at
``/schema/openapi.json`` and ``.yaml``/``.yml``. Stoplight Elements and RapiDoc (2 MB more of bundles for a
third and fourth view of the same document) are not served.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from litestar import Request, Router
from litestar.openapi.plugins import OpenAPIRenderPlugin, YamlRenderPlugin
from litestar.static_files import create_static_files_router

__all__ = [
    "ASSETS_DIR",
    "OfflineRedocPlugin",
    "OfflineSwaggerPlugin",
    "docs_render_plugins",
    "graphiql_html",
]

ASSETS_DIR = Path(__file__).with_name("static")
ASSETS_ROUTE_NAME = "docs_assets"
_ASSETS_PATH = "/static"  # under the OpenAPI router's path


def _register_assets(router: Router) -> None:
    """Serve ``ASSETS_DIR`` under ``router`` once, whichever docs plugin asks first."""
    prefix = router.path.rstrip("/") + _ASSETS_PATH
    if any(route.path.startswith(prefix + "/") for route in router.routes):
        return
    router.register(
        create_static_files_router(
            path=_ASSETS_PATH,
            directories=[ASSETS_DIR],
            name=ASSETS_ROUTE_NAME,
            include_in_schema=False,
            send_as_attachment=False,
        )
    )


def _page(
    assets: str,
    *,
    title: str,
    stylesheets: Sequence[str],
    container: str,
    scripts: Sequence[str],
    body_class: str = "",
) -> bytes:
    """An HTML page without inline script or style; ``assets`` is the URL prefix of :data:`ASSETS_DIR`."""
    links = "".join(f'<link rel="stylesheet" href="{escape(f"{assets}/{s}")}">' for s in stylesheets)
    sources = "".join(f'<script src="{escape(f"{assets}/{s}")}"></script>' for s in scripts)
    body = f' class="{body_class}"' if body_class else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)}</title><link rel="icon" href="data:,">{links}</head>'
        f"<body{body}>{container}{sources}</body></html>"
    ).encode()


def graphiql_html(request: Request[Any, Any, Any]) -> bytes:
    """GraphiQL 3 on React 18, the versions Strawberry's own template loads (without the explorer plugin)."""
    assets = request.app.route_reverse(ASSETS_ROUTE_NAME, file_path="/").rstrip("/")
    return _page(
        assets,
        title="GraphiQL · Connection Key",
        stylesheets=["graphiql/graphiql.min.css", "pages/docs.css"],
        container='<div id="graphiql">Loading…</div>',
        scripts=[
            "react/react.production.min.js",
            "react-dom/react-dom.production.min.js",
            "graphiql/graphiql.min.js",
            "pages/graphiql.js",
        ],
        body_class="graphiql",
    )


class _OfflinePlugin(OpenAPIRenderPlugin):
    """A docs page whose assets come from :data:`ASSETS_DIR`, served next to it under the OpenAPI router
    when ``serve_assets`` (development)."""

    def __init__(self, *, path: str | Sequence[str], serve_assets: bool) -> None:
        super().__init__(path=path)
        self.serve_assets = serve_assets
        self.assets = _ASSETS_PATH

    def receive_router(self, router: Router) -> None:
        self.assets = router.path.rstrip("/") + _ASSETS_PATH
        if self.serve_assets:
            _register_assets(router)

    @staticmethod
    def _container(element_id: str, request: Request[Any, Any, Any]) -> str:
        spec = escape(OpenAPIRenderPlugin.get_openapi_json_route(request))
        return f'<div id="{element_id}" data-spec-url="{spec}"></div>'


class OfflineRedocPlugin(_OfflinePlugin):
    """Redoc's standalone bundle; no Google Fonts (its theme falls back to the system's sans-serif)."""

    def __init__(self, *, serve_assets: bool, path: str | Sequence[str] = ("/", "/redoc")) -> None:
        super().__init__(path=path, serve_assets=serve_assets)

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return _page(
            self.assets,
            title=str(openapi_schema["info"]["title"]),
            stylesheets=["pages/docs.css"],
            container=self._container("redoc-container", request),
            scripts=["redoc/redoc.standalone.js", "pages/redoc.js"],
        )


class OfflineSwaggerPlugin(_OfflinePlugin):
    """Swagger UI's bundle with the base layout (the standalone preset's URL bar is left out)."""

    def __init__(self, *, serve_assets: bool, path: str | Sequence[str] = "/swagger") -> None:
        super().__init__(path=path, serve_assets=serve_assets)

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return _page(
            self.assets,
            title=str(openapi_schema["info"]["title"]),
            stylesheets=["swagger-ui/swagger-ui.css", "pages/docs.css"],
            container=self._container("swagger-container", request),
            scripts=["swagger-ui/swagger-ui-bundle.js", "pages/swagger.js"],
        )


def docs_render_plugins(*, development: bool) -> list[OpenAPIRenderPlugin]:
    """The OpenAPI router's pages: Redoc at the root, Swagger UI, and the document as YAML (JSON is added by
    Litestar). Their assets are served in development only."""
    return [
        OfflineRedocPlugin(serve_assets=development),
        OfflineSwaggerPlugin(serve_assets=development),
        YamlRenderPlugin(path=["/openapi.yaml", "/openapi.yml"]),
    ]
