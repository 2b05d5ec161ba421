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
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import import_module
from typing import Any, Protocol, TypeVar

from sqlalchemy import Column, Engine, MetaData, String, Table, select
from sqlalchemy.engine import Dialect

from users_service.db.errors import DatabaseUnavailable, MissingTable
from users_service.db.schema import SchemaState, compare_revisions
from users_service.db.signal import CommitSignal
from users_service.db.statements import Row, Statement, compiled
from users_service.metrics import POOL_TIMEOUTS, POOL_WAIT
from users_service.settings import Settings

C = TypeVar("C")

# Alembic's own table, as the readiness check reads it.
alembic_version = Table("alembic_version", MetaData(), Column("version_num", String(32)))


class Connection(Protocol):
    dialect: Dialect

    async def one(self, statement: Statement, values: Mapping[str, Any] = ...) -> Row | None: ...

    async def all(self, statement: Statement, values: Mapping[str, Any] = ...) -> list[Row]: ...

    async def run(self, statement: Statement, values: Mapping[str, Any] = ...) -> int: ...

    async def run_many(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None: ...


class Database:
    """What every database offers the request path.

    Reads that may scan many rows (`heavy=True`) take a turn first: at most
    DB_HEAVY_READS of them run at once, so that they can neither hold up
    the cheap reads nor the writes; a request waits for its turn at most
    DB_POOL_TIMEOUT_SECONDS (then 503).
    """

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self._acquire_timeout = settings.db_pool_timeout_seconds
        self._heavy_reads = settings.db_heavy_reads
        self._heavy_turns: asyncio.Semaphore | None = None
        # Set after each write transaction this process commits (long polls wait on it).
        self.commits = CommitSignal()

    def read(self, *, heavy: bool = False) -> AbstractAsyncContextManager[Connection]:
        """Reads; `heavy` for those that may scan many rows."""
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """One write transaction: committed when the block ends, else rolled back."""
        raise NotImplementedError

    def statements(self) -> AbstractAsyncContextManager[Connection]:
        """Writes whose statements are each whole on their own (crud.py says
        which: a create of one user, an update that checks the version it
        read). Where the database allows, each commits as it runs
        (PostgreSQL: no BEGIN and COMMIT round trips, and the change log's
        order lock held only while its statement runs); elsewhere this is a
        `transaction()`."""
        return self.transaction()

    async def start(self) -> None:
        """Called once the event loop runs (the app's lifespan)."""
        self._heavy_turns = asyncio.Semaphore(self._heavy_reads)

    def pool_usage(self) -> tuple[int, int]:
        """(connections in use, connections idle), for /metrics."""
        pool: Any = self.engine.pool
        return pool.checkedout(), pool.checkedin()

    async def close(self) -> None:
        """Release every connection, and the engine's."""
        self.engine.dispose()

    async def prune(self) -> None:
        """Close what has been idle too long (called every second or so)."""

    async def _take_turns(
        self, *semaphores: asyncio.Semaphore | None
    ) -> tuple[asyncio.Semaphore, ...]:
        """Take one place in each semaphore (give them back with
        `_give_back`), waiting DB_POOL_TIMEOUT_SECONDS at most in all (then
        DatabaseUnavailable). A wait, and a wait that runs out, are counted
        for /metrics (db_pool_wait_seconds, db_pool_timeouts_total).

        A coroutine and a plain function rather than a context manager: one
        generator less per request (the request path's reads and writes
        take their turns here)."""
        deadline = waited_since = None
        held: list[asyncio.Semaphore] = []
        try:
            for semaphore in semaphores:
                if semaphore is None:
                    continue
                if semaphore.locked():
                    now = asyncio.get_running_loop().time()
                    waited_since = waited_since or now
                    deadline = deadline or now + self._acquire_timeout
                    remaining = deadline - now
                    try:
                        await asyncio.wait_for(semaphore.acquire(), max(remaining, 0))
                    except TimeoutError:
                        POOL_WAIT.observe(asyncio.get_running_loop().time() - waited_since)
                        POOL_TIMEOUTS.inc()
                        raise DatabaseUnavailable("no database connection free") from None
                else:
                    await semaphore.acquire()  # free: no timer needed
                held.append(semaphore)
        except BaseException:
            self._give_back(held)
            raise
        if waited_since is not None:  # /metrics: only the requests that waited
            POOL_WAIT.observe(asyncio.get_running_loop().time() - waited_since)
        return tuple(held)

    @staticmethod
    def _give_back(held: Sequence[asyncio.Semaphore]) -> None:
        """Give back the places `_take_turns` took."""
        for semaphore in reversed(held):
            semaphore.release()

    def _heavy_turn(self, heavy: bool) -> asyncio.Semaphore | None:
        assert self._heavy_turns is not None, "Database.start() was not called"
        return self._heavy_turns if heavy else None

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
    """A pool of our own: DB_POOL_SIZE + DB_MAX_OVERFLOW connections at most.

    Reads never hold the last DB_WRITE_RESERVE of them, so a writer never
    waits behind readers; reads that may scan also take a heavy turn. A
    request waits DB_POOL_TIMEOUT_SECONDS at most for all of it (then 503).

    The most recently returned connection is used first (its server
    process and caches are warm); a connection older than
    DB_CONNECTION_MAX_LIFETIME_SECONDS (less up to a tenth, so that they do
    not all expire at once) or idle longer than
    DB_CONNECTION_MAX_IDLE_SECONDS is closed instead of used. Measured
    against psycopg_pool 3.3's AsyncConnectionPool (which has these limits
    too): in process on PostgreSQL it cost 61% more per GET and 27% more per
    POST than this pool (docs/performance.md), so we keep ours.
    Drivers implement `_connection` and `_close`.
    """

    def __init__(self, engine: Engine, settings: Settings) -> None:
        super().__init__(engine, settings)
        self._size = settings.db_pool_size + settings.db_max_overflow
        self._reads = max(1, self._size - settings.db_write_reserve)
        self._lifetime = settings.db_connection_max_lifetime_seconds
        self._max_idle = settings.db_connection_max_idle_seconds
        # (connection, when it was returned), the most recent last.
        self._idle: deque[tuple[Any, float]] = deque()
        self._expires: dict[int, float] = {}  # id(connection) -> when it retires
        self._slots: asyncio.Semaphore | None = None
        self._read_slots: asyncio.Semaphore | None = None

    async def start(self) -> None:
        await super().start()
        self._slots = asyncio.Semaphore(self._size)
        self._read_slots = asyncio.Semaphore(self._reads)

    def pool_usage(self) -> tuple[int, int]:
        free = self._slots._value if self._slots is not None else self._size
        return self._size - free, len(self._idle)

    def _connection(self, *, in_transaction: bool) -> AbstractAsyncContextManager[Connection]:
        """A connection of the pool, in a transaction when `in_transaction`
        (else each statement commits by itself)."""
        raise NotImplementedError

    async def _close(self, raw: Any) -> None:
        """Close a connection of the driver's."""
        raise NotImplementedError

    def _born(self, raw: C) -> C:
        """Note a new connection's retirement time; returns it."""
        lifetime = self._lifetime * random.uniform(0.9, 1.0)
        self._expires[id(raw)] = time.monotonic() + lifetime
        return raw

    async def _retire(self, *connections: Any) -> None:
        for raw in connections:
            self._expires.pop(id(raw), None)
            await self._close(raw)

    async def _reuse(self) -> Any | None:
        """The most recently returned idle connection still within its lifetime."""
        now = time.monotonic()
        while self._idle:
            raw, _ = self._idle.pop()
            if self._expires.get(id(raw), now) > now:
                return raw
            await self._retire(raw)
        return None

    async def _keep(self, raw: Any) -> None:
        """Keep a returned connection for the next request."""
        self._idle.append((raw, time.monotonic()))

    async def prune(self) -> None:
        now = time.monotonic()
        while self._idle:
            raw, since = self._idle[0]
            if now - since <= self._max_idle and self._expires.get(id(raw), now) > now:
                return
            self._idle.popleft()
            await self._retire(raw)

    async def close(self) -> None:
        while self._idle:
            await self._retire(self._idle.pop()[0])
        await super().close()

    @asynccontextmanager
    async def read(self, *, heavy: bool = False) -> AsyncIterator[Connection]:
        held = await self._take_turns(self._heavy_turn(heavy), self._read_slots, self._slots)
        try:
            async with self._connection(in_transaction=False) as connection:
                yield connection
        finally:
            self._give_back(held)

    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        return self._writes(in_transaction=True)

    @asynccontextmanager
    async def _writes(self, *, in_transaction: bool) -> AsyncIterator[Connection]:
        """A connection for writes (a writer's slot), in a transaction or
        (`statements()` where the driver allows) each statement its own."""
        held = await self._take_turns(self._slots)
        try:
            async with self._connection(in_transaction=in_transaction) as connection:
                yield connection
        finally:
            self._give_back(held)
        self.commits.notify()


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
