"""What can go wrong in the database, in the service's own terms.

Each driver module translates its driver's errors (`translated`) into
`UniqueViolation` (a unique index refused a row), `MissingTable` (never
migrated) or `DatabaseUnavailable`
(the database cannot be reached, is busy, or cancelled a statement that ran
too long: `StatementTimeout`). Code that uses SQLAlchemy itself (migrations,
/readyz on the engine, import and export) classifies SQLAlchemy's errors with
`is_unavailable` and `is_statement_timeout`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exc


class UniqueViolation(Exception):
    """The database refused a row that a unique index already has."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached, or did not answer in time."""


class StatementTimeout(DatabaseUnavailable):
    """The database cancelled a statement after DB_STATEMENT_TIMEOUT_MS."""


class MissingTable(Exception):
    """A statement named a table the database does not have (never migrated)."""


def is_missing_table(error: BaseException) -> bool:
    """PostgreSQL's undefined_table, MariaDB's ER_NO_SUCH_TABLE, SQLite's message."""
    args: tuple[object, ...] = getattr(error, "args", ())
    return (
        getattr(error, "sqlstate", None) == "42P01"
        or (bool(args) and args[0] == 1146)
        or "no such table" in str(error)
    )


# What each database says when it cancels a statement that ran past the
# limit: PostgreSQL's query_canceled, MariaDB's and MySQL's error numbers
# (and SQLite's interrupt, below).
_STATEMENT_TIMEOUT_SQLSTATES = frozenset({"57014"})
_STATEMENT_TIMEOUT_ERRNOS = frozenset({1969, 3024})


def is_statement_timeout(error: BaseException) -> bool:
    """Whether the database cancelled a statement for running too long
    (a SQLAlchemy error, or the driver's own)."""
    original = error.orig if isinstance(error, exc.DBAPIError) else error
    if getattr(original, "sqlstate", None) in _STATEMENT_TIMEOUT_SQLSTATES:
        return True
    if getattr(original, "sqlite_errorname", None) == "SQLITE_INTERRUPT":
        return True  # our progress handler's deadline (db/sqlite.py)
    args: tuple[object, ...] = getattr(original, "args", ())
    return bool(args) and args[0] in _STATEMENT_TIMEOUT_ERRNOS


def is_unavailable(error: BaseException) -> bool:
    """Whether a SQLAlchemy error means the database cannot be reached or is busy."""
    if isinstance(error, exc.TimeoutError):  # no connection free in the pool
        return True
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, (exc.OperationalError, exc.InterfaceError)
        )
    return False


def unavailable(error: Exception) -> DatabaseUnavailable:
    """Our exception for a driver's error that means the database is not there."""
    kind = StatementTimeout if is_statement_timeout(error) else DatabaseUnavailable
    return kind(str(error))


@contextmanager
def translated(
    connection: Any, unique: type[Exception], unreachable: tuple[type[Exception], ...]
) -> Iterator[None]:
    """A driver's errors as ours: `unique` as UniqueViolation, `unreachable`
    as DatabaseUnavailable (and the connection marked failed)."""
    try:
        yield
    except unique as error:
        raise UniqueViolation(str(error)) from None
    except Exception as error:
        if is_missing_table(error):
            raise MissingTable(str(error)) from None
        if isinstance(error, unreachable):
            connection.failed = True
            raise unavailable(error) from error
        raise
