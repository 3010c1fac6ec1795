"""``python -m app [--host H] [--port P] ...``: the same as ``litestar run`` from the project root, with
uvicorn's WebSocket message limit set to ``server.max_body_bytes``.

``litestar run`` starts uvicorn with its default ``ws_max_size`` (16 MiB) and has no option to change it:
the app closes a socket whose message is over the limit (1009), but only after uvicorn has buffered the
whole message. Here the limit is applied in uvicorn itself, for both ways ``litestar run`` starts it: in
process (``uvicorn.run``) and, with ``--reload`` or ``--wc``, as a ``uvicorn`` subprocess (which reads
``UVICORN_WS_MAX_SIZE``). Serving with uvicorn directly: pass ``--ws-max-size``.
"""

import functools
import os
import sys

import uvicorn
from litestar.cli.main import litestar_group


def limit_websocket_messages(max_bytes: int) -> None:
    """Make every uvicorn started from this process refuse WebSocket messages over ``max_bytes``."""
    os.environ.setdefault("UVICORN_WS_MAX_SIZE", str(max_bytes))
    if not isinstance(uvicorn.run, functools.partial):
        uvicorn.run = functools.partial(uvicorn.run, ws_max_size=int(os.environ["UVICORN_WS_MAX_SIZE"]))


def main() -> None:
    from app.settings import SettingsError, load_settings

    try:
        limit_websocket_messages(load_settings().server.max_body_bytes)
    except SettingsError:
        pass  # create_app reports it with the offending key
    litestar_group(["--app", "app:create_app", "run", *sys.argv[1:]])


if __name__ == "__main__":
    main()
