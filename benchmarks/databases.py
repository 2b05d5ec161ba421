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
ANALYZE = {"sqlite": "ANALYZE", "postgresql": "ANALYZE users", "mariadb": "ANALYZE TABLE users"}


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


def analyze(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql(ANALYZE[engine.dialect.name])
