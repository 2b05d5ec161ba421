"""The Alembic migrations, run on a fresh, empty database of every backend."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, column, create_engine, insert, inspect, pool, select, table, text

from tests.databases import create_fresh_database, migrate
from users_service.db.schema import alembic_config, head_revisions
from users_service.models import NAME_WINDOW_INDEX, idempotency_key_users
from users_service.settings import load_settings


@contextmanager
def engine_for(url: str) -> Iterator[Engine]:
    engine = create_engine(load_settings(database_url=url).sqlalchemy_url, poolclass=pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    with engine_for(url) as engine:
        return set(inspect(engine).get_table_names())


def indexes(url: str, table: str) -> dict[str, dict[str, Any]]:
    with engine_for(url) as engine:
        return {str(index["name"]): dict(index) for index in inspect(engine).get_indexes(table)}


def stored_revisions(url: str) -> set[str]:
    with engine_for(url) as engine, engine.connect() as connection:
        return {
            row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))
        }


def downgrade(url: str, revision: str) -> None:
    config = alembic_config(url)
    config.attributes["configure_logger"] = False
    command.downgrade(config, revision)


def check(url: str) -> None:
    config = alembic_config(url)
    config.attributes["configure_logger"] = False
    command.check(config)


def test_upgrade_from_empty_creates_users_table_with_its_indexes(
    backend: str, tmp_path: Path
) -> None:
    url = create_fresh_database(backend, tmp_path, "_mig_upgrade")
    assert "users" not in table_names(url)

    migrate(url)

    assert "users" in table_names(url)
    found = indexes(url, "users")
    assert found["uq_users_email"]["column_names"] == ["email"]
    assert found["uq_users_email"]["unique"]
    assert found["ix_users_created_at_id"]["column_names"] == ["created_at", "id"]
    assert not found["ix_users_created_at_id"]["unique"]
    # MariaDB's own index for short name queries (models.MARIADB_ONLY_INDEXES).
    if backend == "mariadb":
        assert found[NAME_WINDOW_INDEX]["column_names"] == ["created_at", "id", "name"]
    else:
        assert NAME_WINDOW_INDEX not in found
    assert stored_revisions(url) == head_revisions()


def test_models_and_migrations_agree_so_check_finds_nothing_to_generate(
    backend: str, tmp_path: Path
) -> None:
    url = create_fresh_database(backend, tmp_path, "_mig_check")
    migrate(url)

    check(url)


def test_downgrade_to_base_removes_users_table_and_upgrade_restores_it(
    backend: str, tmp_path: Path
) -> None:
    url = create_fresh_database(backend, tmp_path, "_mig_cycle")
    migrate(url)

    downgrade(url, "base")

    assert "users" not in table_names(url)
    assert stored_revisions(url) == set()

    migrate(url)

    assert "users" in table_names(url)
    assert {"uq_users_email", "ix_users_created_at_id"} <= indexes(url, "users").keys()
    assert stored_revisions(url) == head_revisions()
    check(url)


def users_table_character_sets(url: str) -> dict[str, str]:
    """The users table's charset and collation, and each text column's charset."""
    with engine_for(url) as engine, engine.connect() as connection:
        charset, collation = connection.execute(
            text(
                "SELECT c.CHARACTER_SET_NAME, t.TABLE_COLLATION"
                " FROM information_schema.TABLES t"
                " JOIN information_schema.COLLATION_CHARACTER_SET_APPLICABILITY c"
                "   ON c.COLLATION_NAME = t.TABLE_COLLATION"
                " WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_NAME = 'users'"
            )
        ).one()
        columns = connection.execute(
            text(
                "SELECT COLUMN_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'users'"
                " AND CHARACTER_SET_NAME IS NOT NULL"
            )
        )
        return {
            "table": str(charset),
            "table collation": str(collation),
            **{str(name): str(column_charset) for name, column_charset in columns},
        }


UTF8MB4_USERS_TABLE = {
    "table": "utf8mb4",
    "table collation": "utf8mb4_bin",
    "id": "utf8mb4",
    "name": "utf8mb4",
    "email": "utf8mb4",
}


def test_users_table_is_utf8mb4_on_mariadb(backend: str, tmp_path: Path) -> None:
    if backend != "mariadb":
        pytest.skip("character sets are a MariaDB/MySQL matter")
    url = create_fresh_database(backend, tmp_path, "_mig_charset")
    migrate(url)

    assert users_table_character_sets(url) == UTF8MB4_USERS_TABLE


def test_users_table_is_utf8mb4_on_mariadb_whatever_the_database_default(
    backend: str, tmp_path: Path
) -> None:
    if backend != "mariadb":
        pytest.skip("character sets are a MariaDB/MySQL matter")
    url = create_fresh_database(backend, tmp_path, "_mig_charset_latin1")
    with engine_for(url) as engine, engine.begin() as connection:
        connection.execute(text("ALTER DATABASE CHARACTER SET latin1 COLLATE latin1_swedish_ci"))
    migrate(url)

    assert users_table_character_sets(url) == UTF8MB4_USERS_TABLE


def upgrade(url: str, revision: str) -> None:
    config = alembic_config(url)
    config.attributes["configure_logger"] = False
    command.upgrade(config, revision)


BEFORE_ANSWER_LINKS = "51a9ff0025be"


def test_answers_stored_before_the_links_get_theirs_at_upgrade(
    backend: str, tmp_path: Path
) -> None:
    """Revision 2f0a23782b22 links the answers already stored, so a delete
    erases them too: a single create's, every item of a batch's, over more
    than one page of keys; errors and claims still in flight get none."""
    url = create_fresh_database(backend, tmp_path, "_mig_links")
    upgrade(url, BEFORE_ANSWER_LINKS)
    singles = {f"single-{n:03}": uuid.uuid4() for n in range(250)}
    batch = [uuid.uuid4(), uuid.uuid4()]
    rows = [
        stored_answer(key, "POST /users", 201, {"id": str(user_id), "name": "A"})
        for key, user_id in singles.items()
    ]
    rows += [
        stored_answer(
            "batch", "POST /users/batch", 201, {"items": [{"id": str(i)} for i in batch]}
        ),
        stored_answer("conflict", "POST /users", 409, {"code": "email_taken"}),
        {**stored_answer("in-flight", "POST /users", None, None), "body": None},
    ]
    keys = table("idempotency_keys", *(column(name) for name in rows[0]))
    with engine_for(url) as engine, engine.begin() as connection:
        connection.execute(insert(keys), rows)

    migrate(url)

    with engine_for(url) as engine, engine.connect() as connection:
        links = connection.execute(
            select(idempotency_key_users.c.key, idempotency_key_users.c.user_id)
        ).all()
    expected = {(key, user_id) for key, user_id in singles.items()}
    expected |= {("batch", user_id) for user_id in batch}
    assert set(links) == expected
    assert len(links) == len(expected)


def stored_answer(key: str, endpoint: str, status: int | None, body: Any) -> dict[str, Any]:
    return {
        "caller": "anonymous",
        "endpoint": endpoint,
        "key": key,
        "request_hash": "0" * 64,
        "created_at": datetime.now(UTC),
        "status": status,
        "headers": "{}",
        "body": json.dumps(body).encode(),
    }
