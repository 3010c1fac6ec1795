"""The app's lifespan: every long-lived resource opens here and closes in reverse order."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from litestar import Litestar

from app.observability import route_server_logs
from app.services.container import open_services
from app.settings import Settings

__all__ = ["services_lifespan"]


def services_lifespan(settings: Settings) -> Callable[[Litestar], contextlib.AbstractAsyncContextManager[None]]:
    """A Litestar lifespan that opens :func:`app.services.container.open_services` into ``app.state.services``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        route_server_logs()  # uvicorn configured its loggers after create_app ran
        async with open_services(settings) as services:
            app.state.services = services
            try:
                yield
            finally:
                app.state.services = None

    return lifespan
