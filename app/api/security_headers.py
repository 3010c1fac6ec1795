"""Security headers on every HTTP response (REST, GraphQL, errors and unmatched routes alike).

Installed as a Litestar ``before_send`` hook rather than a middleware: Litestar applies middleware per
route handler, so a 404 for an unknown path or a 405 would go out without them; ``before_send`` wraps the
whole application. WebSocket frames are not HTTP responses and are left alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

from app.settings import Settings

__all__ = ["API_CSP", "DOCS_CSP", "security_headers_hook"]

API_CSP = "default-src 'none'; frame-ancestors 'none'"
"""An API response is data, never a document: nothing may load, nothing may frame it."""

_CDNS = "https://unpkg.com https://cdn.jsdelivr.net"
DOCS_CSP = (
    "default-src 'self'; "
    f"script-src 'self' 'unsafe-inline' {_CDNS}; "
    f"style-src 'self' 'unsafe-inline' {_CDNS} https://fonts.googleapis.com; "
    "img-src 'self' data: https:; font-src 'self' data: https:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'"
)
"""GraphiQL and the OpenAPI pages load their scripts from CDNs and inline code: allowed in development only."""

_HSTS = "max-age=63072000; includeSubDomains"


def security_headers_hook(settings: Settings) -> Callable[[Message, Scope], Awaitable[None]]:
    """A ``before_send`` hook adding the headers; HSTS in production, the relaxed CSP for HTML pages
    (GraphiQL, OpenAPI docs) in development."""
    relax_html = settings.is_development
    fixed = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if settings.server.environment == "production":
        fixed["Strict-Transport-Security"] = _HSTS

    async def add_security_headers(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope["type"] != "http":
            return
        headers = MutableScopeHeaders.from_message(message)
        for name, value in fixed.items():
            headers[name] = value
        html = (headers.get("content-type") or "").lower().startswith("text/html")
        headers["Content-Security-Policy"] = DOCS_CSP if relax_html and html else API_CSP
        if "cache-control" not in headers:
            # Responses carry personal data and verdicts: no shared or browser cache may keep them.
            headers["Cache-Control"] = "no-store"

    return add_security_headers
