"""Bulk loads (`db/bulk.py`): SQLite's load settings apply while loading and
the configured ones come back; a failed load leaves nothing (SQLite) or
whole batches (PostgreSQL, MariaDB), with every index; statistics after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, func, select

from tests.databases import create_fresh_database, migrate
from users_service.db.bulk import SQLITE_LOAD_CACHE_KIB, bulk_load, insert_rows
from users_service.db.engine import create_db_engine
from users_service.models import users
from users_service.seed import seed_users, synthetic_users
from users_service.settings import load_settings

SYNCHRONOUS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}


def fresh_engine(backend: str, work: Path, **settings: str) -> Engine:
    url = create_fresh_database(backend, work, "_bulk")
    migrate(url)
    return create_db_engine(load_settings(database_url=url, environment="test", **settings))


@pytest.fixture
def engine(backend: str, tmp_path: Path) -> Iterator[Engine]:
    engine = fresh_engine(backend, tmp_path)
    yield engine
    engine.dispose()


def pragma(connection: Connection, name: str) -> object:
    """Read through the driver: no transaction of SQLAlchemy's begins."""
    return connection.connection.driver_connection.execute(f"PRAGMA {name}").fetchone()[0]  # type: ignore[union-attr]


def count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(users)).scalar_one())


def index_names(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return {row.name for row in connection.exec_driver_sql("PRAGMA index_list(users)")}


@pytest.mark.parametrize("configured", ["NORMAL", "FULL", "EXTRA"])
def test_a_sqlite_load_runs_at_normal_with_a_large_cache_then_gives_back_the_configured_settings(
    tmp_path, configured
):
    engine = fresh_engine("sqlite", tmp_path, sqlite_synchronous=configured)
    with engine.connect() as connection:
        cache_size = pragma(connection, "cache_size")
        with bulk_load(connection) as load:
            assert pragma(connection, "synchronous") == SYNCHRONOUS["NORMAL"]
            assert pragma(connection, "cache_size") == -SQLITE_LOAD_CACHE_KIB
            with load.batch():
                insert_rows(connection, list(synthetic_users(100)))
        assert pragma(connection, "synchronous") == SYNCHRONOUS[configured]
        assert pragma(connection, "cache_size") == cache_size
        assert pragma(connection, "journal_mode") == "wal"
    assert count(engine) == 100
    engine.dispose()


def test_a_failed_load_leaves_nothing_on_sqlite_and_whole_batches_elsewhere(engine, backend):
    seed_users(engine, 100, progress=False)
    indexes = index_names(engine) if backend == "sqlite" else set()
    rows = synthetic_users(3_000)
    with (
        engine.connect() as connection,
        pytest.raises(RuntimeError, match="interrupted"),
        bulk_load(connection) as load,
    ):
        with load.batch():
            insert_rows(connection, [next(rows) for _ in range(1_000)])
        with load.batch():
            insert_rows(connection, [next(rows) for _ in range(1_000)])
            raise RuntimeError("interrupted")
    # SQLite loads in one transaction (its indexes dropped and rebuilt inside it).
    assert count(engine) == (100 if backend == "sqlite" else 1_100)
    if backend == "sqlite":
        assert index_names(engine) == indexes


# Not MariaDB: InnoDB also recalculates its statistics by itself, nothing to tell apart.
@pytest.mark.backends("sqlite", "postgresql")
def test_a_seed_leaves_statistics_for_the_planner(engine, backend):
    seed_users(engine, 1_000, progress=False)
    with engine.connect() as connection:
        if backend == "sqlite":
            analyzed = connection.exec_driver_sql(
                "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'users'"
            ).scalar_one()
        else:  # -1 until the table is analyzed (or vacuumed, which takes far longer to come)
            analyzed = connection.exec_driver_sql(
                "SELECT reltuples = 1000 FROM pg_class WHERE oid = 'users'::regclass"
            ).scalar_one()
    assert analyzed
