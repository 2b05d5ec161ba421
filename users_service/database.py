"""The request path's database access: async, lean, one shape on every database.

Routes do their database work (through crud.py and idempotency.py) with a
`Database`:

    async with database.read() as connection:
        row = await connection.one(statement, {"user_id": user_id})
    async with database.transaction() as connection:
        await connection.run(statement, values)

A `Statement` is a Core statement built from the models, compiled once per
database into the driver's SQL. Values go through the column types' own
conversions, so what this path writes is exactly what SQLAlchemy writes
(migrations, seeding and tests use SQLAlchemy itself). Rows come back as the
driver's tuples: the hot statements select text the database rendered.

Where the work runs depends on the database, because that is where the time
goes (see README, "Throughput"):

- SQLite: reads run on the event loop, on one connection: a lookup by key
  costs tens of microseconds, less than a hop to a thread. Reads that may
  scan (`heavy=True`) run on a worker thread instead. Writes run on one
  writer connection and are group-committed: each write transaction is a
  savepoint inside a transaction that commits (one fsync, on a worker
  thread) once the writes waiting have run; writes that arrive meanwhile
  share the next commit. A write is acknowledged only after its commit.
- PostgreSQL: psycopg's async connections in a pool of our own (nothing is
  sent on release; a connection that failed is dropped, and the idle ones
  with it).
- MariaDB/MySQL: PyMySQL connections from the SQLAlchemy engine's pool,
  each statement on a worker thread.

Driver errors come out as `UniqueViolation` or `DatabaseUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import select
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, Protocol, cast

import anyio.to_thread
import psycopg
import pymysql
from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from users_service.db import is_statement_timeout, postgresql_connect_args
from users_service.settings import Settings

Row = tuple[Any, ...]
logger = logging.getLogger("users_service.database")


class UniqueViolation(Exception):
    """The database refused a row that a unique index already has."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached, or did not answer in time."""


class StatementTimeout(DatabaseUnavailable):
    """The database cancelled a statement after DB_STATEMENT_TIMEOUT_MS."""


def unavailable(error: Exception) -> DatabaseUnavailable:
    """Our exception for a driver's error that means the database is not there."""
    kind = StatementTimeout if is_statement_timeout(error) else DatabaseUnavailable
    return kind(str(error))


@contextmanager
def _translated(
    connection: Any, unique: type[Exception], unreachable: tuple[type[Exception], ...]
) -> Iterator[None]:
    """A driver's errors as ours: `unique` as UniqueViolation, `unreachable`
    as DatabaseUnavailable (and the connection marked failed)."""
    try:
        yield
    except unique as error:
        raise UniqueViolation(str(error)) from None
    except unreachable as error:
        connection.failed = True
        raise unavailable(error) from error


class Statement:
    """A Core statement compiled for one database, and its bind conversions."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self.sql = str(compiled)
        self._fixed: dict[str, Any] = {}  # values built into the statement
        self._convert: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self._convert[name] = process
            if not bind.required:
                value = bind.effective_value
                self._fixed[name] = value if process is None or value is None else process(value)
        columns = getattr(statement, "selected_columns", ())
        processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]
        self._decoders = processors if any(processors) else None

    def params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(self._fixed)
        convert = self._convert
        for name, value in values.items():
            process = convert.get(name)
            params[name] = value if process is None or value is None else process(value)
        return params

    def decode(self, row: Row) -> Row:
        """The row's values as the column types give them (datetimes, UUIDs)."""
        if self._decoders is None:
            return row
        return tuple(
            value if decode is None or value is None else decode(value)
            for decode, value in zip(self._decoders, row, strict=True)
        )


_COMPILED: dict[tuple[str, str, Any], Statement] = {}


def compiled(connection: Connection, key: Any, build: Callable[[], ClauseElement]) -> Statement:
    """The statement `build()` makes, compiled for the connection's database once.

    `key` names the statement's shape: the same key must always build the
    same statement (values travel separately).
    """
    dialect = connection.dialect
    cache_key = (dialect.name, dialect.paramstyle, key)
    statement = _COMPILED.get(cache_key)
    if statement is None:
        statement = _COMPILED[cache_key] = Statement(build(), dialect)
    return statement


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
        """Release every connection."""


# --------------------------------------------------------------------------
# SQLite


_SQLITE_UNAVAILABLE = (sqlite3.OperationalError,)


class _SQLiteConnection:
    """A sqlite3 connection used on the event loop (its calls do not wait on I/O)."""

    def __init__(self, raw: sqlite3.Connection, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect
        self.failed = False

    def _execute(self, statement: Statement, values: Mapping[str, Any]) -> sqlite3.Cursor:
        with _translated(self, sqlite3.IntegrityError, _SQLITE_UNAVAILABLE):
            return self.raw.execute(statement.sql, statement.params(values))

    async def one(self, statement: Statement, values: Mapping[str, Any] = {}) -> Row | None:
        row: Row | None = self._execute(statement, values).fetchone()
        return row

    async def all(self, statement: Statement, values: Mapping[str, Any] = {}) -> list[Row]:
        return self._execute(statement, values).fetchall()

    async def run(self, statement: Statement, values: Mapping[str, Any] = {}) -> int:
        return self._execute(statement, values).rowcount

    async def run_many(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        with _translated(self, sqlite3.IntegrityError, _SQLITE_UNAVAILABLE):
            self.raw.executemany(statement.sql, [statement.params(row) for row in rows])


class _ThreadedConnection:
    """A DB-API connection whose every statement runs on a worker thread."""

    def __init__(
        self,
        raw: Any,
        dialect: Dialect,
        integrity: type[Exception],
        unavailable: tuple[type[Exception], ...],
    ) -> None:
        self.raw = raw
        self.dialect = dialect
        self.abandoned = False
        self._integrity = integrity
        self._unavailable = unavailable
        self.failed = False

    def _call(self, statement: Statement, values: Any, many: bool) -> tuple[list[Row], int]:
        cursor = self.raw.cursor()
        try:
            if many:
                cursor.executemany(statement.sql, [statement.params(row) for row in values])
                return [], cursor.rowcount
            cursor.execute(statement.sql, statement.params(values))
            rows = list(cursor.fetchall()) if cursor.description else []
            return rows, cursor.rowcount
        finally:
            cursor.close()

    async def _run(
        self, statement: Statement, values: Any, many: bool = False
    ) -> tuple[list[Row], int]:
        try:
            with _translated(self, self._integrity, self._unavailable):
                return await anyio.to_thread.run_sync(
                    self._call, statement, values, many, abandon_on_cancel=True
                )
        except anyio.get_cancelled_exc_class():
            # The request was cancelled (a shutdown's grace ran out) with the
            # statement still running on its thread: the connection is that
            # thread's until it returns, so it must never be used again, and
            # the statement is cancelled (see _release_threaded).
            self.failed = self.abandoned = True
            raise

    async def one(self, statement: Statement, values: Mapping[str, Any] = {}) -> Row | None:
        rows, _ = await self._run(statement, values)
        return rows[0] if rows else None

    async def all(self, statement: Statement, values: Mapping[str, Any] = {}) -> list[Row]:
        rows, _ = await self._run(statement, values)
        return rows

    async def run(self, statement: Statement, values: Mapping[str, Any] = {}) -> int:
        _, count = await self._run(statement, values)
        return count

    async def run_many(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        await self._run(statement, rows, many=True)


async def _release_threaded(fairy: Any, connection: _ThreadedConnection) -> None:
    """Give a pooled connection back: rolled back, or (failed) discarded.

    A failed connection may still be in use by a statement whose request was
    cancelled: it is closed here, never rolled back from a second thread.
    """
    if connection.failed:
        fairy.invalidate()
        fairy.close()
    else:
        await anyio.to_thread.run_sync(fairy.close)  # rolls back what is open


class SQLiteDatabase(Database):
    def __init__(self, engine: Engine, settings: Settings) -> None:
        super().__init__(engine, settings)
        # sqlite3 takes named parameters as well as "?": a dict per call.
        self.dialect = type(engine.dialect)(paramstyle="named")  # type: ignore[call-arg]
        self._busy_timeout = settings.sqlite_busy_timeout_ms / 1000
        self._fairies: list[Any] = []
        self._reader: _SQLiteConnection | None = None
        self._writer: _SQLiteConnection | None = None
        self._write_turn = asyncio.Lock()
        self._batch: asyncio.Future[None] | None = None
        # The batch's commit task; held so that it is not collected early.
        self._committing: asyncio.Task[None] | None = None

    def _connection(self) -> _SQLiteConnection:
        fairy = self.engine.raw_connection()  # with the engine's pragmas (db.py)
        self._fairies.append(fairy)
        raw: sqlite3.Connection = fairy.driver_connection  # type: ignore[assignment]
        return _SQLiteConnection(raw, self.dialect)

    async def start(self) -> None:
        self._reader = self._connection()
        self._writer = self._connection()
        # The writer waits for other processes' write locks without
        # blocking the event loop (see _begin).
        self._writer.raw.execute("PRAGMA busy_timeout=0")

    async def close(self) -> None:
        for fairy in self._fairies:
            fairy.close()
        self._fairies.clear()
        self._reader = self._writer = None

    @asynccontextmanager
    async def read(self, *, heavy: bool = False) -> AsyncIterator[Connection]:
        if not heavy:
            assert self._reader is not None, "Database.start() was not called"
            yield self._reader
            return
        fairy = await anyio.to_thread.run_sync(self.engine.raw_connection)
        connection = _ThreadedConnection(
            fairy.driver_connection,
            self.dialect,
            sqlite3.IntegrityError,
            _SQLITE_UNAVAILABLE,
        )
        try:
            yield connection
        finally:
            if connection.abandoned:
                connection.raw.interrupt()
            await _release_threaded(fairy, connection)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        writer = self._writer
        assert writer is not None, "Database.start() was not called"
        async with self._write_turn:
            if self._batch is None:
                await self._begin(writer.raw)
                self._batch = asyncio.get_running_loop().create_future()
                self._committing = asyncio.get_running_loop().create_task(self._commit(writer.raw))
            batch = self._batch
            writer.raw.execute("SAVEPOINT request")
            try:
                yield writer
            except BaseException:
                writer.raw.execute("ROLLBACK TO request")
                writer.raw.execute("RELEASE request")
                raise
            writer.raw.execute("RELEASE request")
        await asyncio.shield(batch)

    async def _begin(self, raw: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting (off the loop's clock) for another process's lock."""
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.0005
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if time.monotonic() > deadline:
                    raise unavailable(error) from error
            await asyncio.sleep(pause)
            # Short pauses: a writer that sleeps long keeps losing the lock
            # to the other process's writers.
            pause = min(pause * 2, 0.004)

    async def _commit(self, raw: sqlite3.Connection) -> None:
        """Commit the open batch after the writes queued before this call have run."""
        async with self._write_turn:
            batch, self._batch = self._batch, None
            assert batch is not None
            try:
                await anyio.to_thread.run_sync(raw.execute, "COMMIT")
            except sqlite3.Error as error:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                batch.set_exception(unavailable(error))
                batch.exception()  # retrieved here; every writer in the batch re-raises it
            else:
                batch.set_result(None)


# --------------------------------------------------------------------------
# PostgreSQL


_POSTGRES_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError)


class _PostgresConnection:
    def __init__(self, raw: psycopg.AsyncConnection[Any], dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect
        self.failed = False

    async def _execute(
        self, statement: Statement, values: Mapping[str, Any]
    ) -> psycopg.AsyncCursor[Any]:
        with _translated(self, psycopg.errors.UniqueViolation, _POSTGRES_UNAVAILABLE):
            return await self.raw.execute(statement.sql, statement.params(values))

    async def one(self, statement: Statement, values: Mapping[str, Any] = {}) -> Row | None:
        cursor = await self._execute(statement, values)
        row: Row | None = await cursor.fetchone()
        return row

    async def all(self, statement: Statement, values: Mapping[str, Any] = {}) -> list[Row]:
        cursor = await self._execute(statement, values)
        return await cursor.fetchall()

    async def run(self, statement: Statement, values: Mapping[str, Any] = {}) -> int:
        cursor = await self._execute(statement, values)
        return cursor.rowcount

    async def run_many(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        with _translated(self, psycopg.errors.UniqueViolation, _POSTGRES_UNAVAILABLE):
            async with self.raw.cursor() as cursor:
                await cursor.executemany(statement.sql, [statement.params(row) for row in rows])


def _still_open(raw: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection is still open, without a round trip.

    An idle connection has nothing to read unless its server closed it (a
    restart, a terminated backend: EOF or a farewell message is waiting).
    """
    try:
        readable, _, _ = select.select([raw.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError):
        return False
    return not readable


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


class PostgresDatabase(PooledDatabase):
    def __init__(self, engine: Engine, settings: Settings) -> None:
        super().__init__(engine, settings)
        url = engine.url.set(drivername="postgresql")
        self._connect_args = postgresql_connect_args(
            settings, url.query.get("options"), "-c TimeZone=UTC"
        )
        self._conninfo = url.difference_update_query(["options"]).render_as_string(
            hide_password=False
        )

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().close()

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        slots = await self._take_slot()
        while self._idle:
            raw: psycopg.AsyncConnection[Any] = self._idle.pop()
            if _still_open(raw):
                return raw
            await raw.close()
        try:
            return await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, **self._connect_args
            )
        except psycopg.Error as error:
            slots.release()
            raise unavailable(error) from error

    async def _release(self, raw: psycopg.AsyncConnection[Any], failed: bool) -> None:
        assert self._slots is not None
        try:
            idle = raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            if failed or raw.closed or not idle:
                # A connection that failed says the server went away or
                # restarted: the idle ones are likely dead too.
                for dead in [raw, *self._idle] if failed else [raw]:
                    await dead.close()
                if failed:
                    self._idle.clear()
            else:
                self._idle.append(raw)
        finally:
            self._slots.release()

    @asynccontextmanager
    async def read(self, *, heavy: bool = False) -> AsyncIterator[Connection]:
        connection = _PostgresConnection(await self._acquire(), self.dialect)
        try:
            yield connection
        finally:
            await self._release(connection.raw, connection.failed)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        connection = _PostgresConnection(await self._acquire(), self.dialect)
        try:
            try:
                async with connection.raw.transaction():
                    yield connection
            except _POSTGRES_UNAVAILABLE as error:
                connection.failed = True  # at BEGIN or COMMIT
                raise unavailable(error) from error
        finally:
            await self._release(connection.raw, connection.failed)


# --------------------------------------------------------------------------
# MariaDB / MySQL

_MYSQL_UNAVAILABLE = (pymysql.err.OperationalError, pymysql.err.InterfaceError)


class MySQLDatabase(PooledDatabase):
    """PyMySQL connections in a pool of our own, each statement on a thread.

    The connections are made by the SQLAlchemy engine (its connect options
    and hooks) and then detached from its pool: a connection here is only
    ever touched by the thread running its statement, never reset from
    another (SQLAlchemy's pool would roll back a connection it finds
    unreferenced, on whatever thread that happens).
    """

    async def close(self) -> None:
        while self._idle:
            await anyio.to_thread.run_sync(self._idle.pop().close)

    def _new_connection(self) -> Any:
        fairy = self.engine.raw_connection()
        fairy.detach()
        return fairy

    def _checked(self, fairy: Any) -> bool:
        """Whether an idle connection still answers (one round trip)."""
        try:
            fairy.dbapi_connection.ping(reconnect=False)
            return True
        except Exception:
            fairy.close()
            return False

    async def _acquire(self) -> Any:
        slots = await self._take_slot()
        try:
            while self._idle:
                fairy = self._idle.pop()
                if await anyio.to_thread.run_sync(self._checked, fairy):
                    return fairy
            return await anyio.to_thread.run_sync(self._new_connection)
        except BaseException as error:
            slots.release()
            if isinstance(error, Exception):
                raise unavailable(error) from error
            raise

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_ThreadedConnection]:
        fairy = await self._acquire()
        connection = _ThreadedConnection(
            fairy.dbapi_connection, self.dialect, pymysql.err.IntegrityError, _MYSQL_UNAVAILABLE
        )
        try:
            yield connection
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(fairy, connection)

    async def _release(self, fairy: Any, connection: _ThreadedConnection) -> None:
        assert self._slots is not None
        try:
            if connection.abandoned:
                # Its thread still waits on the server: end the server side,
                # and leave the connection to that thread.
                await self._kill(fairy.dbapi_connection.thread_id())
            elif connection.failed:
                await anyio.to_thread.run_sync(fairy.close)
            else:
                await anyio.to_thread.run_sync(connection.raw.rollback)
                self._idle.append(fairy)
        except Exception:
            logger.warning("could not release a database connection", exc_info=True)
        finally:
            self._slots.release()

    async def _kill(self, thread_id: int) -> None:
        """End a server connection whose statement was abandoned (its request
        was cancelled): the statement stops, its transaction rolls back, and
        the thread waiting on it returns."""

        def kill() -> None:
            killer = self.engine.raw_connection()
            try:
                cursor = killer.cursor()
                cursor.execute(f"KILL {int(thread_id)}")
                cursor.close()
            finally:
                killer.close()

        await anyio.to_thread.run_sync(kill)

    @asynccontextmanager
    async def read(self, *, heavy: bool = False) -> AsyncIterator[Connection]:
        async with self._connection() as connection:
            yield connection

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._connection() as connection:
            yield connection
            try:
                await anyio.to_thread.run_sync(connection.raw.commit)
            except _MYSQL_UNAVAILABLE as error:
                connection.failed = True
                raise unavailable(error) from error


def create_database(engine: Engine, settings: Settings) -> Database:
    kinds: dict[str, type[Database]] = {
        "sqlite": SQLiteDatabase,
        "postgresql": PostgresDatabase,
        "mysql": MySQLDatabase,
        "mariadb": MySQLDatabase,
    }
    return kinds[engine.dialect.name](engine, settings)
