"""The databases the suite runs on, and fresh, empty databases on them.

SQLite always; PostgreSQL and MariaDB/MySQL when their URLs are listed in
`TEST_DATABASE_URLS` (comma-separated). Each listed URL names a database
that the suite drops and creates anew: it never depends on what an earlier
run left behind. A listed database that cannot be reached fails the run.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from users_service.db.schema import alembic_config
from users_service.settings import load_settings


def configured_urls() -> dict[str, str]:
    """{test id: URL} for every server database in TEST_DATABASE_URLS."""
    urls = {}
    for raw in os.environ.get("TEST_DATABASE_URLS", "").split(","):
        if raw.strip():
            url = load_settings(database_url=raw.strip()).sqlalchemy_url
            backend = "mariadb" if url.get_backend_name() == "mysql" else url.get_backend_name()
            urls[backend] = url.render_as_string(hide_password=False)
    return urls


def backend_ids() -> list[str]:
    return ["sqlite", *configured_urls()]


def create_fresh_database(backend: str, tmp_dir: Path, suffix: str = "") -> str:
    """A new, empty database on `backend`; returns its URL."""
    if backend == "sqlite":
        path = tmp_dir / f"users{suffix}.db"
        for leftover in tmp_dir.glob(f"users{suffix}.db*"):
            leftover.unlink()
        return f"sqlite:///{path}"
    url = make_url(configured_urls()[backend])
    assert url.database, f"TEST_DATABASE_URLS: {backend} URL must name a database"
    name = f"{url.database}{suffix}"
    if backend == "postgresql":
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        statements = [
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}"',
        ]
    else:
        admin = create_engine(url.set(database="mysql"))
        statements = [
            f"DROP DATABASE IF EXISTS `{name}`",
            f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        ]
    with admin.connect() as connection:
        for statement in statements:
            connection.execute(text(statement))
        connection.commit()
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def migrate(url: str, revision: str = "head") -> None:
    config = alembic_config(url)
    config.attributes["configure_logger"] = False
    command.upgrade(config, revision)
