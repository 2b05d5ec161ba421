"""SQLite on the request path: reads on the event loop, writes group-committed.

Reads run on the event loop, on one connection: a lookup by key costs tens
of microseconds, less than a hop to a thread. Reads that may scan
(`heavy=True`) run on worker threads instead, DB_HEAVY_READS at most at
once, each interrupted after DB_STATEMENT_TIMEOUT_MS (SQLite has no
statement timeout of its own: a progress handler checks the clock). Writes
run on one writer connection and are group-committed: each write transaction
is a savepoint inside a transaction that commits (one fsync, on a thread of
its own, so that it never waits behind readers' threads) once the writes
waiting have run; writes that arrive meanwhile share the next commit. A
write is acknowledged only after its commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from sqlalchemy import Engine
from sqlalchemy.engine import Dialect

from users_service.db.database import Connection, Database
from users_service.db.errors import translated, unavailable
from users_service.db.statements import Row, Statement
from users_service.db.threaded import ThreadedConnection, release_threaded
from users_service.metrics import POOL_TIMEOUTS, POOL_WAIT
from users_service.settings import Settings

_UNAVAILABLE = (sqlite3.OperationalError,)
# How often (in SQLite virtual machine steps) a statement checks the clock:
# about every 0.1 ms of work here, a check costing under a microsecond.
_PROGRESS_STEPS = 1000


def _deadline(seconds: float) -> Callable[[], int]:
    """A progress handler that interrupts the statement once `seconds` passed
    (SQLite then raises "interrupted": a StatementTimeout, see db/errors.py)."""
    deadline = time.monotonic() + seconds

    def past_deadline() -> int:
        return time.monotonic() > deadline

    return past_deadline


class _SQLiteConnection:
    """A sqlite3 connection used on the event loop (its calls do not wait on I/O)."""

    def __init__(self, raw: sqlite3.Connection, dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect
        self.failed = False

    def _execute(self, statement: Statement, values: Mapping[str, Any]) -> sqlite3.Cursor:
        with translated(self, sqlite3.IntegrityError, _UNAVAILABLE):
            return self.raw.execute(statement.sql, statement.params(values))

    async def one(self, statement: Statement, values: Mapping[str, Any] = {}) -> Row | None:
        row: Row | None = self._execute(statement, values).fetchone()
        return row

    async def all(self, statement: Statement, values: Mapping[str, Any] = {}) -> list[Row]:
        return self._execute(statement, values).fetchall()

    async def run(self, statement: Statement, values: Mapping[str, Any] = {}) -> int:
        return self._execute(statement, values).rowcount

    async def run_many(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        with translated(self, sqlite3.IntegrityError, _UNAVAILABLE):
            self.raw.executemany(statement.sql, [statement.params(row) for row in rows])


class SQLiteDatabase(Database):
    def __init__(self, engine: Engine, settings: Settings) -> None:
        super().__init__(engine, settings)
        # sqlite3 takes named parameters as well as "?": a dict per call.
        self.dialect = type(engine.dialect)(paramstyle="named")  # type: ignore[call-arg]
        self._busy_timeout = settings.sqlite_busy_timeout_ms / 1000
        self._statement_timeout = settings.db_statement_timeout_ms / 1000
        # Threads: the heavy reads', and the commit's own (created in start()).
        self._heavy_threads: anyio.CapacityLimiter | None = None
        self._commit_thread: anyio.CapacityLimiter | None = None
        self._fairies: list[Any] = []
        self._reader: _SQLiteConnection | None = None
        self._writer: _SQLiteConnection | None = None
        self._write_turn = asyncio.Lock()
        self._batch: asyncio.Future[None] | None = None
        # The batch's commit task; held so that it is not collected early.
        self._committing: asyncio.Task[None] | None = None

    def _connection(self) -> _SQLiteConnection:
        fairy = self.engine.raw_connection()  # with the engine's pragmas (db/engine.py)
        self._fairies.append(fairy)
        raw: sqlite3.Connection = fairy.driver_connection  # type: ignore[assignment]
        return _SQLiteConnection(raw, self.dialect)

    async def start(self) -> None:
        await super().start()
        self._heavy_threads = anyio.CapacityLimiter(self._heavy_reads)
        self._commit_thread = anyio.CapacityLimiter(1)
        self._reader = self._connection()
        self._writer = self._connection()
        # The writer waits for other processes' write locks without
        # blocking the event loop (see _begin).
        self._writer.raw.execute("PRAGMA busy_timeout=0")
        # Each request of a group commit runs in a SAVEPOINT, whose journal
        # of the pages it changes SQLite keeps in a temporary file by
        # default: measured here, that cost an insert into the change log
        # 140 µs more inside a savepoint than outside; in memory, nothing.
        # (A request's pages: a few KiB; a batch of 1,000 users: a few MiB.)
        self._writer.raw.execute("PRAGMA temp_store=MEMORY")

    async def close(self) -> None:
        for fairy in self._fairies:
            fairy.close()
        self._fairies.clear()
        self._reader = self._writer = None
        await super().close()

    @asynccontextmanager
    async def read(self, *, heavy: bool = False) -> AsyncIterator[Connection]:
        if not heavy:
            assert self._reader is not None, "Database.start() was not called"
            yield self._reader
            return
        held = await self._take_turns(self._heavy_turn(heavy))
        try:
            threads = self._heavy_threads
            fairy = await anyio.to_thread.run_sync(self.engine.raw_connection, limiter=threads)
            raw: sqlite3.Connection = fairy.driver_connection  # type: ignore[assignment]
            connection = ThreadedConnection(
                raw, self.dialect, sqlite3.IntegrityError, _UNAVAILABLE, limiter=threads
            )
            if self._statement_timeout:
                raw.set_progress_handler(_deadline(self._statement_timeout), _PROGRESS_STEPS)
            try:
                yield connection
            finally:
                if connection.abandoned:
                    raw.interrupt()
                else:
                    raw.set_progress_handler(None, 0)
                await release_threaded(fairy, connection)
        finally:
            self._give_back(held)

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
        self.commits.notify()

    async def _begin(self, raw: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting (off the loop's clock) for another process's lock."""
        try:
            raw.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError:
            pass  # another process writes: wait for it (counted for /metrics)
        started = time.monotonic()
        deadline = started + self._busy_timeout
        pause = 0.0005
        while True:
            await asyncio.sleep(pause)
            try:
                raw.execute("BEGIN IMMEDIATE")
                POOL_WAIT.observe(time.monotonic() - started)
                return
            except sqlite3.OperationalError as error:
                if time.monotonic() > deadline:
                    POOL_WAIT.observe(time.monotonic() - started)
                    POOL_TIMEOUTS.inc()
                    raise unavailable(error) from error
            # Short pauses: a writer that sleeps long keeps losing the lock
            # to the other process's writers.
            pause = min(pause * 2, 0.004)

    async def _commit(self, raw: sqlite3.Connection) -> None:
        """Commit the open batch after the writes queued before this call have run."""
        async with self._write_turn:
            batch, self._batch = self._batch, None
            assert batch is not None
            try:
                await anyio.to_thread.run_sync(raw.execute, "COMMIT", limiter=self._commit_thread)
            except sqlite3.Error as error:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                batch.set_exception(unavailable(error))
                batch.exception()  # retrieved here; every writer in the batch re-raises it
            else:
                batch.set_result(None)
