"""The baseline: a bare Litestar app with one POST endpoint taking a small msgspec Struct body.

Run exactly like the service (``litestar --app bench.bare_app:app run --port PORT``, pinned with
``taskset -c 0``) so the difference between the two is what Connection Key itself costs: auth,
GraphQL, the use case, SQLite and the outbox.
"""

from __future__ import annotations

import logging
import uuid

from litestar import Litestar, post
from msgspec import Struct

__all__ = ["app"]


class EchoIn(Struct, frozen=True, rename="camel"):
    target_user_id: uuid.UUID
    note: str = ""


class EchoOut(Struct, frozen=True, rename="camel"):
    target_user_id: uuid.UUID
    ok: bool


@post("/echo", status_code=201)
async def echo(data: EchoIn) -> EchoOut:
    return EchoOut(target_user_id=data.target_user_id, ok=True)


def _no_access_log() -> None:
    # Like Connection Key (app/observability.py disables uvicorn.access; with CK_LOGGING__LEVEL=WARNING
    # it writes no line per request), the baseline logs nothing per request. Done at start-up
    # because uvicorn (re)configures its loggers after `litestar run` has imported this module.
    logging.getLogger("uvicorn.access").disabled = True


app = Litestar(route_handlers=[echo], on_startup=[_no_access_log])
