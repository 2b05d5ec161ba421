"""PostgreSQL on the request path: psycopg's async connections, pooled.

The pool is our own (PooledDatabase): nothing is sent on release, a
connection that failed is dropped (and the idle ones with it: the server
likely went away), and an idle connection is checked without a round trip.
"""

from __future__ import annotations

import select
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import Dialect

from users_service.db.database import Connection, PooledDatabase
from users_service.db.engine import postgresql_connect_args
from users_service.db.errors import translated, unavailable
from users_service.db.statements import Row, Statement
from users_service.settings import Settings

_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError)


class _PostgresConnection:
    def __init__(self, raw: psycopg.AsyncConnection[Any], dialect: Dialect) -> None:
        self.raw = raw
        self.dialect = dialect
        self.failed = False

    async def _execute(
        self, statement: Statement, values: Mapping[str, Any]
    ) -> psycopg.AsyncCursor[Any]:
        with translated(self, psycopg.errors.UniqueViolation, _UNAVAILABLE):
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
        await super().close()

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
            except _UNAVAILABLE as error:
                connection.failed = True  # at BEGIN or COMMIT
                raise unavailable(error) from error
        finally:
            await self._release(connection.raw, connection.failed)
