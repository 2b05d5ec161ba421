"""/metrics counts waits for a database connection or turn, and the waits that run out.

On every database a read that may scan takes one of DB_HEAVY_READS turns
(on PostgreSQL and MariaDB, then a connection of the pool: the same wait);
on SQLite a write also waits for another process's write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from tests.databases import create_fresh_database
from users_service.db.database import Database, create_database
from users_service.db.engine import create_db_engine
from users_service.db.errors import DatabaseUnavailable
from users_service.settings import load_settings


def pool_figures() -> tuple[float, float, float]:
    """(waits, seconds waited, timeouts) so far."""

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    return (
        sample("db_pool_wait_seconds_count"),
        sample("db_pool_wait_seconds_sum"),
        sample("db_pool_timeouts_total"),
    )


def database_on(url: str, **settings: object) -> Database:
    loaded = load_settings(database_url=url, environment="test", **settings)
    return create_database(create_db_engine(loaded), loaded)


def test_waits_for_a_turn_and_waits_that_run_out_are_counted(backend: str, tmp_path: Path) -> None:
    url = create_fresh_database(backend, tmp_path, "_pool_waits")
    database = database_on(url, db_heavy_reads=1, db_pool_timeout_seconds=0.5)

    async def scenario() -> None:
        await database.start()
        try:
            async with database.read(heavy=True):
                with pytest.raises(DatabaseUnavailable):  # waits 0.5 s, then gives up
                    async with database.read(heavy=True):
                        pass
            free = asyncio.Event()

            async def hold() -> None:
                async with database.read(heavy=True):
                    free.set()
                    await asyncio.sleep(0.3)

            holder = asyncio.create_task(hold())
            await free.wait()
            async with database.read(heavy=True):  # waits for the holder's turn
                pass
            await holder
        finally:
            await database.close()

    waits, seconds, timeouts = pool_figures()
    asyncio.run(scenario())
    after = pool_figures()
    assert (after[0] - waits, after[2] - timeouts) == (2, 1)
    # 0.5 s timed out, then about 0.3 s (less the holder's head start).
    assert after[1] - seconds >= 0.65


def test_a_sqlite_write_waiting_for_another_process_lock_is_counted(tmp_path: Path) -> None:
    url = create_fresh_database("sqlite", tmp_path, "_write_lock")
    database = database_on(url, sqlite_busy_timeout_ms=400)
    other = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)

    async def scenario() -> None:
        await database.start()
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's writer, until its COMMIT
            with pytest.raises(DatabaseUnavailable):  # waits 0.4 s, then gives up
                async with database.transaction():
                    pass
            asyncio.get_running_loop().call_later(0.2, other.execute, "COMMIT")
            async with database.transaction():  # waits until the other commits
                pass
        finally:
            await database.close()

    waits, seconds, timeouts = pool_figures()
    try:
        asyncio.run(scenario())
    finally:
        other.close()
    after = pool_figures()
    assert (after[0] - waits, after[2] - timeouts) == (2, 1)
    assert after[1] - seconds >= 0.55
