"""Database failures as the service reports them: our outage or contention is ``UNAVAILABLE`` with
Retry-After (a typed 503), never a 500 and never the user's fault."""

from __future__ import annotations

import errno
import socket
import sqlite3

import asyncpg.exceptions

from app.errors import ErrorCode, ServiceError

__all__ = ["DATABASE_OUTAGE_ERRORS", "DatabaseUnavailable", "is_database_outage", "unavailable_from"]


class DatabaseUnavailable(ServiceError):
    """The database is busy, locked or away: the caller should retry after ``retry_after`` seconds."""

    def __init__(self, message: str = "The service is busy; try again shortly.", retry_after: int = 1) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message, retryAfter=retry_after)


# Errors that mean "the database is unreachable or busy right now", not "this request or event is bad":
# edges answer UNAVAILABLE and consumers retry instead of dead-lettering. ``DatabaseUnavailable`` is among
# them, so code catching this tuple keeps retrying what the engine has already translated. Of the OSErrors
# only a lost or refused connection, a name that does not resolve and a timeout (asyncpg's pool acquire
# and ``command_timeout`` raise a bare ``TimeoutError``) count: a missing file or a permission error is a
# bug or a bad deployment, which must surface as one (a 500 with its traceback, a dead-lettered event),
# not be retried forever.
DATABASE_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    socket.herror,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.AdminShutdownError,
)


# A driver's socket error that is not a ConnectionError subclass: an unreachable host or network.
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ENOTCONN,
        errno.ESHUTDOWN,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
    }
)


def is_database_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is the database being busy or away.

    The chain is followed as Python prints it: ``__cause__``, else ``__context__`` unless the raiser
    suppressed it (``raise ... from None`` says the error is not about what was being handled)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DATABASE_OUTAGE_ERRORS):
            return True
        if isinstance(current, OSError) and current.errno in _NETWORK_ERRNOS:
            return True
        if isinstance(current, sqlite3.OperationalError) and _sqlite_busy(current):
            return True
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            current = current.__context__
    return False


def unavailable_from(exc: BaseException, retry_after: int, what: str = "The database is busy") -> DatabaseUnavailable:
    """The typed refusal for ``exc`` (a timeout, a lock, a lost connection); raise it ``from exc``. The
    message names the kind of failure only: driver messages may quote SQL or values."""
    if isinstance(exc, DatabaseUnavailable):
        return exc
    return DatabaseUnavailable(f"{what}; try again shortly.", retry_after=retry_after)


def _sqlite_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text or "disk i/o" in text or "unable to open" in text
