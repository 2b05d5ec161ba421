"""PostgreSQL on the request path: psycopg's async connections, pooled.

The pool is our own (PooledDatabase): nothing is sent on release, a
connection that failed is dropped (and the idle ones with it: the server
likely went away), and an idle connection is checked without a round trip.
"""

from __future__ import annotations

import select
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, cast

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import Dialect

from users_service.db.database import Connection, PooledDatabase
from users_service.db.engine import postgresql_connect_args, transaction_settings
from users_service.db.errors import translated, unavailable
from users_service.db.statements import Row, Statement
from users_service.settings import DbPooler, Settings

_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError)


class _PostgresConnection:
    def __init__(
        self,
        raw: psycopg.AsyncConnection[Any],
        cursor: psycopg.AsyncCursor[Any],
        dialect: Dialect,
    ) -> None:
        self.raw = raw
        self.cursor = cursor
        self.dialect = dialect
        self.failed = False

    async def _execute(
        self, statement: Statement, values: Mapping[str, Any]
    ) -> psycopg.AsyncCursor[Any]:
        with translated(self, psycopg.errors.UniqueViolation, _UNAVAILABLE):
            return await self.cursor.execute(statement.sql, statement.params(values))

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
        with translated(self, psycopg.errors.UniqueViolation, _UNAVAILABLE):
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


class PostgresDatabase(PooledDatabase):
    def __init__(self, engine: Engine, settings: Settings) -> None:
        super().__init__(engine, settings)
        # libpq's own keywords, as SQLAlchemy's dialect reads the URL (a list
        # of hosts included: `host=h1,h2 port=5432,5432`).
        _, url_args = engine.dialect.create_connect_args(engine.url)
        url_args.pop("context", None)
        url_options = url_args.pop("options", None)
        self._connect_args = {
            **url_args,
            **postgresql_connect_args(settings, url_options, "-c TimeZone=UTC"),
        }
        # Behind a transaction-mode pooler every unit of work, reads too, is
        # a transaction that sets what startup options would (see engine.py).
        self._begin = (
            transaction_settings(settings) if settings.db_pooler is DbPooler.transaction else None
        )
        # The connections requests hold now (see close()).
        self._busy: set[psycopg.AsyncConnection[Any]] = set()
        # One cursor per connection (by id), reused by every statement run
        # on it: connection.execute() makes a cursor, and its adapters, per
        # statement; measured here, reusing one took 66-69 µs of CPU per
        # query where execute() took 86-91 (psycopg 3.3, async).
        self._cursors: dict[int, psycopg.AsyncCursor[Any]] = {}

    async def _close(self, raw: psycopg.AsyncConnection[Any]) -> None:
        self._cursors.pop(id(raw), None)
        await raw.close()

    async def close(self) -> None:
        """Also cancels, in the server, the statements still running: the
        requests a shutdown abandoned once its grace ran out (uvicorn has
        just cancelled them). psycopg cancels them too, but awaiting, and
        the process is about to exit; a statement of `statements()` that
        ran on, an UPDATE waiting on a lock say, would commit by itself."""
        for raw in self._busy:
            if raw.pgconn.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
                with suppress(psycopg.Error):  # the server is gone: so is the statement
                    raw.cancel()  # libpq's blocking cancel request: sent before this returns
        await super().close()

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        while (idle := await self._reuse()) is not None:
            if _still_open(idle):
                return cast(psycopg.AsyncConnection[Any], idle)
            await self._retire(idle)
        try:
            raw = await psycopg.AsyncConnection.connect(autocommit=True, **self._connect_args)
        except psycopg.Error as error:
            raise unavailable(error) from error
        self._cursors[id(raw)] = raw.cursor()
        return self._born(raw)

    async def _release(self, raw: psycopg.AsyncConnection[Any], failed: bool) -> None:
        idle = raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if failed:
            # A connection that failed says the server went away or
            # restarted: the idle ones are likely dead too.
            await self._retire(raw, *(kept for kept, _ in self._idle))
            self._idle.clear()
        elif raw.closed or not idle:
            await self._retire(raw)
        else:
            await self._keep(raw)

    @asynccontextmanager
    async def _connection(self, *, in_transaction: bool) -> AsyncIterator[Connection]:
        raw = await self._acquire()
        connection = _PostgresConnection(raw, self._cursors[id(raw)], self.dialect)
        self._busy.add(connection.raw)
        try:
            if self._begin is not None:
                async with self._pooled_transaction(connection):
                    yield connection
                return
            if not in_transaction:
                yield connection
                return
            try:
                async with connection.raw.transaction():
                    yield connection
            except _UNAVAILABLE as error:
                connection.failed = True  # at BEGIN or COMMIT
                raise unavailable(error) from error
        finally:
            self._busy.discard(connection.raw)
            await self._release(connection.raw, connection.failed)

    def statements(self) -> AbstractAsyncContextManager[Connection]:
        """Each statement its own transaction (autocommit), on a writer's slot.

        The order lock a change takes (changes.py) is then held from its
        statement to that statement's commit, inside the server; in a
        transaction it is held until the COMMIT this process sends once the
        event loop gets back to the request. Behind a transaction-mode pooler
        every unit of work is a transaction (see _pooled_transaction)."""
        if self._begin is not None:
            return self.transaction()
        return self._writes(in_transaction=False)

    @asynccontextmanager
    async def _pooled_transaction(self, connection: _PostgresConnection) -> AsyncIterator[None]:
        """BEGIN and the SET LOCALs in one round trip, then COMMIT (ROLLBACK
        on an error): nothing outlives the transaction, which is all a
        transaction-mode pooler keeps on one server connection."""
        assert self._begin is not None
        raw = connection.raw
        try:
            await raw.execute(self._begin)
        except _UNAVAILABLE as error:
            connection.failed = True
            raise unavailable(error) from error
        try:
            yield
        except BaseException:
            if not connection.failed and not raw.closed:
                try:
                    await raw.execute("ROLLBACK")
                except psycopg.Error:
                    connection.failed = True
            raise
        try:
            await raw.execute("COMMIT")
        except _UNAVAILABLE as error:
            connection.failed = True
            raise unavailable(error) from error
