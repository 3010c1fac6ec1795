"""What counts as our database's outage (UNAVAILABLE at the edges, retried by consumers) and what is a bug
(a 500 with its traceback, a dead-lettered event): a lost or refused connection, a timeout or a busy file
are outages; a missing file, a permission error or anything raised ``from None`` over an outage are not."""

from __future__ import annotations

import errno
import socket
import sqlite3

import asyncpg.exceptions
import pytest

from app.db.errors import DATABASE_OUTAGE_ERRORS, DatabaseUnavailable, is_database_outage


def _raised(make: type[BaseException] | BaseException, during: BaseException, *, suppress: bool) -> BaseException:
    """``make`` raised while ``during`` was being handled, with ``from None`` when ``suppress``."""
    try:
        try:
            raise during
        except BaseException:  # noqa: BLE001 - re-raised as ``make``
            if suppress:
                raise make from None
            raise make  # noqa: B904 - the implicit context is the point
    except BaseException as exc:  # noqa: BLE001 - returned for inspection
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "error",
    [
        DatabaseUnavailable(),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        BrokenPipeError(errno.EPIPE, "broken pipe"),
        TimeoutError(),  # asyncpg's pool acquire and command_timeout raise it bare
        OSError(errno.EHOSTUNREACH, "No route to host"),  # asyncpg connecting: a plain OSError
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        sqlite3.OperationalError("database is locked"),
        sqlite3.OperationalError("disk I/O error"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
    ],
    ids=repr,
)
def test_connection_errors_timeouts_and_busy_files_are_outages(error: BaseException) -> None:
    assert is_database_outage(error)
    wrapped = RuntimeError("could not apply the batch")
    wrapped.__cause__ = error
    assert is_database_outage(wrapped)  # looked for through what it was raised from


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        PermissionError(errno.EACCES, "Permission denied"),
        IsADirectoryError(errno.EISDIR, "Is a directory"),
        OSError(errno.ENOSPC, "No space left on device"),
        sqlite3.OperationalError("no such table: rows"),
        sqlite3.IntegrityError("UNIQUE constraint failed"),
        ValueError("bad value"),
        RuntimeError("bug"),
    ],
    ids=repr,
)
def test_other_os_errors_and_bugs_are_not_outages(error: BaseException) -> None:
    assert not is_database_outage(error)
    assert not isinstance(error, DATABASE_OUTAGE_ERRORS)  # the tuple the Kafka consumer retries on


def test_the_chain_is_followed_as_python_prints_it() -> None:
    outage = ConnectionResetError(errno.ECONNRESET, "reset")
    # An error raised while handling an outage (its implicit context) is about the outage...
    assert is_database_outage(_raised(RuntimeError("rollback failed"), outage, suppress=False))
    # ... unless the raiser said it is not (``from None``): then it is the bug it says it is.
    assert not is_database_outage(_raised(KeyError("missing"), outage, suppress=True))
    # An explicit cause is followed whatever the context.
    explicit = RuntimeError("lost")
    explicit.__cause__ = outage
    explicit.__suppress_context__ = True
    assert is_database_outage(explicit)
