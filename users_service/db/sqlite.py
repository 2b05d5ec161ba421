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
from concurrent.futures import ThreadPoolExecutor
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


async def _until_done(future: asyncio.Future[Any]) -> asyncio.CancelledError | None:
    """Wait for `future` to finish even if this task is cancelled meanwhile,
    and return the cancellation to raise then: a COMMIT under way in its
    thread holds the writer connection until it ends (as anyio's to_thread
    shields its call)."""
    cancelled = None
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError as error:
            cancelled = error
    return cancelled


class _WriteTurn:
    """The writer connection's turn: an asyncio lock whose release wakes
    every task waiting for it, not only the first.

    Writers hold the turn without suspending (SQLite's calls do not wait),
    so the writers woken together all run, one after the other, in the
    same turn of the event loop: a batch's writes run back to back, and its
    commit (whose task is woken in the next turn) starts its fsync while
    the loop answers the batch before. asyncio.Lock wakes one waiter per
    release, one per turn of the loop, so the writes of a batch were spread
    over every turn in which the loop also answered the batch before, and
    the commit started only after all of them: the loop sat idle during
    each fsync (docs/performance.md, "The commit's turn")."""

    def __init__(self) -> None:
        self._held = False
        self._waiters: list[asyncio.Future[None]] = []

    async def __aenter__(self) -> None:
        while self._held:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:  # cancelled before the release
                    self._waiters.remove(waiter)
        self._held = True

    async def __aexit__(self, *exc_info: object) -> None:
        self._held = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


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
        self._commit_thread: ThreadPoolExecutor | None = None
        self._fairies: list[Any] = []
        self._reader: _SQLiteConnection | None = None
        self._writer: _SQLiteConnection | None = None
        self._write_turn = _WriteTurn()
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
        # A thread of the commit's own, handed the COMMIT directly: anyio's
        # to_thread first yields to the event loop, and measured under POST
        # load that turn of the loop (answering the batch before) held the
        # fsync back 10 ms on average.
        self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-commit")
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
        if self._commit_thread is not None:
            self._commit_thread.shutdown()  # a COMMIT under way ends first
            self._commit_thread = None
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
            commit = asyncio.get_running_loop().run_in_executor(
                self._commit_thread, raw.execute, "COMMIT"
            )
            cancelled = await _until_done(commit)
            failure = commit.exception()
            if failure is not None and raw.in_transaction:
                raw.execute("ROLLBACK")
        # The batch is answered after the turn is given back: the next
        # batch's writers, woken by the release, run first, so its commit's
        # task is woken ahead of this batch's answers and its fsync runs
        # while the loop writes them.
        if failure is None:
            batch.set_result(None)
        else:
            if isinstance(failure, sqlite3.Error):
                failure = unavailable(failure)
            batch.set_exception(failure)
            batch.exception()  # retrieved here; every writer in the batch re-raises it
        if cancelled is not None:
            raise cancelled
