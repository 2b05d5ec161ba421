"""The request path's database: one small interface, a driver module per database.

Routes do their database work (through crud.py and idempotency.py) with a
`Database`:

    async with database.read() as connection:
        row = await connection.one(statement, {"user_id": user_id})
    async with database.transaction() as connection:
        await connection.run(statement, values)

Statements are `db/statements.py`'s, compiled once per database. Rows come
back as the driver's tuples: the hot statements select text the database
rendered (`db/rendering.py`). Driver errors come out as `db/errors.py`'s.

Where the work runs depends on the database, because that is where the time
goes (docs/design.md): SQLite on the event loop with group commit
(`db/sqlite.py`), PostgreSQL on psycopg's async connections
(`db/postgresql.py`), MariaDB/MySQL on PyMySQL in worker threads
(`db/mysql.py`). Each imports its driver only when it is used.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from importlib import import_module
from typing import Any, Protocol

from sqlalchemy import Column, Engine, MetaData, String, Table, select
from sqlalchemy.engine import Dialect

from users_service.db.errors import DatabaseUnavailable, MissingTable
from users_service.db.schema import SchemaState, compare_revisions
from users_service.db.statements import Row, Statement, compiled
from users_service.settings import Settings

# Alembic's own table, as the readiness check reads it.
alembic_version = Table("alembic_version", MetaData(), Column("version_num", String(32)))


class Connection(Protocol):
    dialect: Dialect

    async def one(self, statement: Statement, values: Mapping[str, Any] = ...) -> Row | None: ...

    async def all(self, statement: Statement, values: Mapping[str, Any] = ...) -> list[Row]: ...

    async def run(self, statement: Statement, values: Mapping[str, Any] = ...) -> int: ...

    async def run_many(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None: ...


class Database:
    """What every database offers the request path."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.dialect = engine.dialect

    def read(self, *, heavy: bool = False) -> AbstractAsyncContextManager[Connection]:
        """Reads; `heavy` for those that may scan many rows."""
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """One write transaction: committed when the block ends, else rolled back."""
        raise NotImplementedError

    async def start(self) -> None:
        """Called once the event loop runs (the app's lifespan)."""

    def pool_usage(self) -> tuple[int, int]:
        """(connections in use, connections idle), for /metrics."""
        pool: Any = self.engine.pool
        return pool.checkedout(), pool.checkedin()

    async def close(self) -> None:
        """Release every connection, and the engine's."""
        self.engine.dispose()

    async def schema_state(self, *, heads: set[str], known: set[str]) -> SchemaState:
        """Where the database stands against the migrations, read through the
        connections requests use (DatabaseUnavailable when it cannot answer)."""
        try:
            async with self.read() as connection:
                statement = compiled(
                    connection, "alembic_version", lambda: select(alembic_version.c.version_num)
                )
                rows = await connection.all(statement)
        except MissingTable:
            return "behind"  # never migrated
        return compare_revisions({row[0] for row in rows}, heads=heads, known=known)


class PooledDatabase(Database):
    """A pool of our own: DB_POOL_SIZE + DB_MAX_OVERFLOW connections at most,
    a request waiting DB_POOL_TIMEOUT_SECONDS for one at most (then 503)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        super().__init__(engine, settings)
        self._size = settings.db_pool_size + settings.db_max_overflow
        self._acquire_timeout = settings.db_pool_timeout_seconds
        self._idle: deque[Any] = deque()
        self._slots: asyncio.Semaphore | None = None

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self._size)

    def pool_usage(self) -> tuple[int, int]:
        free = self._slots._value if self._slots is not None else self._size
        return self._size - free, len(self._idle)

    async def _take_slot(self) -> asyncio.Semaphore:
        slots = self._slots
        assert slots is not None, "Database.start() was not called"
        if not slots.locked():
            await slots.acquire()  # free: no timer needed
            return slots
        try:
            await asyncio.wait_for(slots.acquire(), self._acquire_timeout)
        except TimeoutError:
            raise DatabaseUnavailable("no database connection free") from None
        return slots


# The module and class of each database's driver (imported when used: the
# PostgreSQL and MariaDB drivers are optional installs).
DRIVERS = {
    "sqlite": ("users_service.db.sqlite", "SQLiteDatabase"),
    "postgresql": ("users_service.db.postgresql", "PostgresDatabase"),
    "mysql": ("users_service.db.mysql", "MySQLDatabase"),
    "mariadb": ("users_service.db.mysql", "MySQLDatabase"),
}


def create_database(engine: Engine, settings: Settings) -> Database:
    module, name = DRIVERS[engine.dialect.name]
    kind: type[Database] = getattr(import_module(module), name)
    return kind(engine, settings)
