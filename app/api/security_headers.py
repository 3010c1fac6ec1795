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

_EMPTY_STYLE = "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
"""The empty ``<style>`` element styled-components (inside Redoc) creates, then fills through the CSSOM."""
_SCROLLBAR_STYLE = "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc='"
"""perfect-scrollbar's fixed rules, which Redoc 2.5.4 injects as one ``<style>`` element."""

DOCS_CSP = (
    "default-src 'none'; "
    "script-src 'self'; "
    f"style-src 'self' {_EMPTY_STYLE} {_SCROLLBAR_STYLE}; "
    "img-src 'self' data:; "
    "font-src 'self' data:; "
    "connect-src 'self'; "
    "worker-src blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""GraphiQL and the OpenAPI pages in development (app.api.docs_pages, assets in app/api/static/).

Scripts, stylesheets and the GraphQL/OpenAPI requests (and GraphiQL's same-origin WebSocket) come from
``'self'`` only; neither ``'unsafe-inline'`` nor ``'unsafe-eval'`` is needed: the pages carry no inline code,
and Redoc's two injected ``<style>`` elements are allowed by their hashes. Beyond ``'self'``: ``data:`` images
and fonts (GraphiQL's CSS embeds its fonts and icons), and ``blob:`` workers (Redoc builds its search worker
from a blob its own script creates). tests/browser checks in chromium that no page trips this policy.
"""

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
