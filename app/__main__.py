"""``python -m app [--host H] [--port P] ...``: the same as ``litestar run`` from the project root."""

import sys

from litestar.cli.main import litestar_group


def main() -> None:
    litestar_group(["--app", "app:create_app", "run", *sys.argv[1:]])


if __name__ == "__main__":
    main()
