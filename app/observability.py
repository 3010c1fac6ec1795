"""structlog setup and per-request context (the request id).

Every log line is JSON with ``request_id`` bound by the middleware below. Keys that could carry secrets
or personal data are redacted by a processor, as a safety net behind the rule of never logging them.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from typing import Any

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import LoggingSettings

__all__ = ["REQUEST_ID_HEADER", "configure_logging", "request_id_middleware"]

REQUEST_ID_HEADER = "x-request-id"
_SENSITIVE = re.compile(
    r"(authorization|token|secret|password|jwt|signed_?payload|answer|response|bio|prompt|statement|email|phone)",
    re.IGNORECASE,
)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_access = structlog.get_logger("connection_key.access")


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key != "event" and _SENSITIVE.search(key):
            event[key] = "[redacted]"
    return event


def configure_logging(settings: LoggingSettings) -> None:
    """Route structlog (and stdlib logging, e.g. uvicorn's) through one JSON or console renderer."""
    level = logging.getLevelName(settings.level)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if settings.json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    route_server_logs()


def route_server_logs() -> None:
    """Send uvicorn's own loggers through the structlog renderer; its access log is replaced by the
    request line the middleware writes (which carries the request id and no client address)."""
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Bind a request id (the caller's ``X-Request-ID`` if well-formed, else a new UUID) to every log
    line of the request, and echo it in the response."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        supplied = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == REQUEST_ID_HEADER.encode()), ""
        )
        request_id = supplied if _VALID_REQUEST_ID.match(supplied) else str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await app(scope, receive, send_with_id)
            finally:
                if scope["type"] == "http":
                    _access.info(
                        "request",
                        method=scope["method"],
                        path=scope["path"],
                        status=status,
                        duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    )

    return middleware
