"""The databases benchmarks run on: made anew, migrated, and seeded."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine

from tests.databases import create_fresh_database, migrate
from users_service.db.engine import create_db_engine
from users_service.settings import load_settings

SERVER_URLS = {
    "postgresql": os.environ.get(
        "BENCH_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/users_service_bench"
    ),
    "mariadb": os.environ.get(
        "BENCH_MARIADB_URL", "mariadb://root@127.0.0.1:3306/users_service_bench"
    ),
}


def backends(default: str = "sqlite,postgresql") -> list[str]:
    return [name.strip() for name in os.environ.get("BENCH_DATABASES", default).split(",")]


def fresh_database(backend: str, work: Path) -> tuple[str, Engine]:
    """A new, migrated database on `backend` (SQLite in `work`); its URL and an engine."""
    if backend != "sqlite":
        os.environ["TEST_DATABASE_URLS"] = SERVER_URLS[backend]
    url = create_fresh_database(backend, work, "")
    migrate(url)
    settings = load_settings(
        database_url=url,
        environment="development",  # only its engine is used: no cursor, no keys
        db_statement_timeout_ms=0,
    )
    return url, create_db_engine(settings)  # seeding a million rows is no request


def process_bytes_written() -> int:
    """What this process has written to storage so far (write_bytes of /proc/self/io)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("write_bytes"))


def server_bytes_written(engine: Engine) -> int:
    """What the database server has written so far, by its own counters (0
    for SQLite, whose writes are its process's): PostgreSQL's WAL and data
    pages (after a CHECKPOINT, so that a load's pages are counted in its
    own step), MariaDB's data files, doublewrite buffer and redo log.
    Server-wide: other databases' writes on the same server count too."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("CHECKPOINT")
            return int(
                connection.exec_driver_sql(
                    "SELECT (SELECT wal_bytes FROM pg_stat_wal)"
                    " + current_setting('block_size')::int"
                    " * (buffers_checkpoint + buffers_clean + buffers_backend)"
                    " FROM pg_stat_bgwriter"
                ).scalar_one()
            )
        if engine.dialect.name in ("mysql", "mariadb"):
            rows = connection.exec_driver_sql(
                "SHOW GLOBAL STATUS WHERE Variable_name IN"
                " ('Innodb_data_written', 'Innodb_os_log_written')"
            ).all()
            return sum(int(row[1]) for row in rows)
    return 0


def database_size(engine: Engine) -> int:
    """Bytes the users table and its indexes take (SQLite: the whole file)."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            return int(
                connection.exec_driver_sql("SELECT pg_total_relation_size('users')").scalar_one()
            )
        if engine.dialect.name in ("mysql", "mariadb"):
            return int(
                connection.exec_driver_sql(
                    "SELECT data_length + index_length FROM information_schema.tables"
                    " WHERE table_schema = DATABASE() AND table_name = 'users'"
                ).scalar_one()
            )
    assert engine.url.database
    return Path(engine.url.database).stat().st_size
