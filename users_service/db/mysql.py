"""MariaDB / MySQL on the request path: PyMySQL, each statement on a thread.

The connections are made by the SQLAlchemy engine (its connect options and
hooks) and then detached from its pool into one of our own: a connection
here is only ever touched by the thread running its statement, never reset
from another (SQLAlchemy's pool would roll back a connection it finds
unreferenced, on whatever thread that happens).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import pymysql

from users_service.db.database import Connection, PooledDatabase
from users_service.db.errors import unavailable
from users_service.db.threaded import ThreadedConnection

logger = logging.getLogger("users_service.db")

_UNAVAILABLE = (pymysql.err.OperationalError, pymysql.err.InterfaceError)


class MySQLDatabase(PooledDatabase):
    async def _close(self, fairy: Any) -> None:
        await anyio.to_thread.run_sync(fairy.close)

    def _new_connection(self) -> Any:
        fairy = self.engine.raw_connection()
        fairy.detach()
        return self._born(fairy)

    def _answers(self, fairy: Any) -> bool:
        """Whether an idle connection still answers (one round trip)."""
        try:
            fairy.dbapi_connection.ping(reconnect=False)
            return True
        except Exception:
            return False

    async def _acquire(self) -> Any:
        try:
            while (fairy := await self._reuse()) is not None:
                if await anyio.to_thread.run_sync(self._answers, fairy):
                    return fairy
                await self._retire(fairy)
            return await anyio.to_thread.run_sync(self._new_connection)
        except Exception as error:
            raise unavailable(error) from error

    @asynccontextmanager
    async def _connection(self, *, in_transaction: bool) -> AsyncIterator[Connection]:
        fairy = await self._acquire()
        connection = ThreadedConnection(
            fairy.dbapi_connection, self.dialect, pymysql.err.IntegrityError, _UNAVAILABLE
        )
        try:
            yield connection
            if in_transaction:
                try:
                    await anyio.to_thread.run_sync(connection.raw.commit)
                except _UNAVAILABLE as error:
                    connection.failed = True
                    raise unavailable(error) from error
        finally:
            with anyio.CancelScope(shield=True):
                await self._release(fairy, connection)

    async def _release(self, fairy: Any, connection: ThreadedConnection) -> None:
        try:
            if connection.abandoned:
                # Its thread still waits on the server: end the server side,
                # and leave the connection to that thread.
                await self._kill(fairy.dbapi_connection.thread_id())
            elif connection.failed:
                await self._retire(fairy)
            else:
                await anyio.to_thread.run_sync(connection.raw.rollback)
                await self._keep(fairy)
        except Exception:
            logger.warning("could not release a database connection", exc_info=True)

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
