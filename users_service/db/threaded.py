"""A DB-API connection whose every statement runs on a worker thread.

Used for the drivers that block (PyMySQL), and for SQLite's reads that may
scan many rows (so that they do not hold up the event loop).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio.to_thread
from sqlalchemy.engine import Dialect

from users_service.db.errors import translated
from users_service.db.statements import Row, Statement


class ThreadedConnection:
    def __init__(
        self,
        raw: Any,
        dialect: Dialect,
        integrity: type[Exception],
        unavailable: tuple[type[Exception], ...],
        *,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.raw = raw
        self.limiter = limiter  # of the threads it may use (None: anyio's default)
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
            with translated(self, self._integrity, self._unavailable):
                return await anyio.to_thread.run_sync(
                    self._call,
                    statement,
                    values,
                    many,
                    abandon_on_cancel=True,
                    limiter=self.limiter,
                )
        except anyio.get_cancelled_exc_class():
            # The request was cancelled (a shutdown's grace ran out) with the
            # statement still running on its thread: the connection is that
            # thread's until it returns, so it must never be used again, and
            # the statement is cancelled (see release_threaded and the drivers).
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


async def release_threaded(fairy: Any, connection: ThreadedConnection) -> None:
    """Give a pooled connection back: rolled back, or (failed) discarded.

    A failed connection may still be in use by a statement whose request was
    cancelled: it is closed here, never rolled back from a second thread.
    """
    if connection.failed:
        fairy.invalidate()
        fairy.close()
    else:
        await anyio.to_thread.run_sync(fairy.close)  # rolls back what is open
