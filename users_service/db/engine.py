"""The SQLAlchemy engine and each database's connection settings.

One engine per process, built from the settings. Migrations, seeding,
import/export and the tests use it as SQLAlchemy; the request path's
database (`db/database.py`) opens its connections through it, so both get
the same connection settings:

- SQLite: WAL, a busy timeout, a durable `synchronous` level; a transaction
  marked with WRITE_OPTION takes the write lock up front (`BEGIN
  IMMEDIATE`), so that concurrent writers queue on the lock instead of
  failing half-way through.
- PostgreSQL: connect and TCP timeouts, and the statement timeout (in each
  transaction instead behind a transaction-mode pooler, DB_POOLER).
- MariaDB/MySQL: connect and I/O timeouts, and the statement limit.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import anyio.to_thread
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection

from users_service.settings import DbPooler, Settings

# Execution option that marks a connection's transaction as one that writes.
WRITE_OPTION = "users_service_write"


def create_db_engine(settings: Settings) -> Engine:
    url = settings.sqlalchemy_url
    backend = url.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args = {
            "check_same_thread": False,
            "timeout": settings.sqlite_busy_timeout_ms / 1000,
        }
    elif backend == "postgresql":
        connect_args = postgresql_connect_args(settings, url.query.get("options"))
    else:
        # The client gives up a little after the server should have, so that
        # a server that stopped answering cannot hold a request for ever.
        io_timeout = (
            settings.db_statement_timeout_ms / 1000 + STATEMENT_TIMEOUT_GRACE_SECONDS
            if settings.db_statement_timeout_ms
            else None
        )
        connect_args = {
            "connect_timeout": settings.db_connect_timeout_seconds,
            "read_timeout": io_timeout,
            "write_timeout": io_timeout,
        }
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # A file needs no liveness check; a server connection may have died.
        pool_pre_ping=backend != "sqlite",
        pool_recycle=3600,
        connect_args=connect_args,
    )
    if backend == "sqlite":
        _configure_sqlite(engine, settings)
    elif backend == "postgresql" and settings.db_pooler is DbPooler.transaction:
        _set_per_transaction(engine, settings)
    elif backend in ("mysql", "mariadb") and settings.db_statement_timeout_ms:
        _limit_mysql_statements(engine, settings.db_statement_timeout_ms)
    return engine


# libpq's TCP options: a server that vanishes without closing the connection
# (host gone, network cut) is given up on after about 10 s of silence, instead
# of the kernel's default of over two hours. A server that is alive but slow
# still answers keepalives and is bounded by the statement timeout instead.
POSTGRESQL_TCP_TIMEOUTS = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms that sent data may stay unacknowledged
}

# How much longer than the statement timeout the MariaDB/MySQL client waits
# for an answer before it drops the connection itself.
STATEMENT_TIMEOUT_GRACE_SECONDS = 5


def postgresql_connect_args(
    settings: Settings, url_options: object, *extra_options: str
) -> dict[str, Any]:
    """libpq's connection arguments: timeouts, and `options` that set
    statement_timeout (and `extra_options`) when the connection starts (no
    extra round trip), after any options the URL itself gives.

    Behind a transaction-mode pooler (DB_POOLER=transaction) a connection
    is not one server session: no startup options (PgBouncer refuses them,
    and the server connection it hands out is shared), and no server-side
    prepared statements (psycopg prepares a statement run five times; the
    next transaction may land on a server connection that never saw it).
    The settings go into each transaction instead (`transaction_settings`).
    """
    connect_args: dict[str, Any] = {
        "connect_timeout": settings.db_connect_timeout_seconds,
        **POSTGRESQL_TCP_TIMEOUTS,
    }
    if settings.db_pooler is DbPooler.transaction:
        connect_args["prepare_threshold"] = None
        if isinstance(url_options, str):
            connect_args["options"] = url_options  # the operator's own
        return connect_args
    options = [url_options] if isinstance(url_options, str) else []
    if settings.db_statement_timeout_ms:
        options.append(f"-c statement_timeout={settings.db_statement_timeout_ms}")
    options += extra_options
    if options:
        connect_args["options"] = " ".join(options)
    return connect_args


def transaction_settings(settings: Settings) -> str:
    """Behind a transaction-mode pooler: the statements that open a
    transaction with what the startup options set otherwise (one round
    trip, the simple protocol: no parameters)."""
    statements = ["BEGIN", "SET LOCAL TimeZone = 'UTC'"]
    if settings.db_statement_timeout_ms:
        statements.append(f"SET LOCAL statement_timeout = {settings.db_statement_timeout_ms}")
    return "; ".join(statements)


def _set_per_transaction(engine: Engine, settings: Settings) -> None:
    """Behind a transaction-mode pooler, SQLAlchemy's transactions (import,
    export, /readyz's engine) get the statement timeout and time zone too."""
    begin_settings = transaction_settings(settings).split("; ")[1:]

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        for statement in begin_settings:
            connection.exec_driver_sql(statement)


def _limit_mysql_statements(engine: Engine, timeout_ms: int) -> None:
    """Each new connection's statement limit: MariaDB's max_statement_time
    (seconds, every statement); MySQL has only max_execution_time (ms, SELECTs)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if "mariadb" in dbapi_connection.get_server_info().lower():
            statement = f"SET SESSION max_statement_time = {timeout_ms / 1000}"
        else:
            statement = f"SET SESSION max_execution_time = {timeout_ms}"
        with dbapi_connection.cursor() as cursor:
            cursor.execute(statement)


# Each SQLite connection reads the database file through a memory map of up
# to this many bytes (SQLite's own cap, SQLITE_MAX_MMAP_SIZE, may be lower),
# not a read() per page into its own 2 MB cache. Measured at a million
# users, name search `Ada Lovelace` (FTS5, then 3,200 users by rowid):
# 12.1 ms -> 7.6 ms for its statement (docs/performance.md).
SQLITE_MMAP_BYTES = 1 << 30


def _configure_sqlite(engine: Engine, settings: Settings) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={settings.sqlite_synchronous.value}")
            cursor.execute(f"PRAGMA busy_timeout={settings.sqlite_busy_timeout_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Writers take the write lock up front. Readers open no transaction:
        # each SELECT is atomic on its own in autocommit mode, and skipping
        # BEGIN/ROLLBACK halves the cost of a read.
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def configure_threadpool(settings: Settings) -> None:
    """Size the worker threads (MariaDB's statements, SQLite's scanning
    reads) to the connection pool."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = settings.db_pool_size + settings.db_max_overflow
