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
from users_service.models import (
    AGE_NAME_INDEX,
    EMAIL_NAME_INDEX,
    NAME_WINDOW_INDEX,
    idempotency_key_users,
)
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
    # MariaDB's own indexes for name queries (models.MARIADB_ONLY_INDEXES).
    own = {
        NAME_WINDOW_INDEX: ["created_at", "id", "name"],
        AGE_NAME_INDEX: ["age", "id", "name"],
        EMAIL_NAME_INDEX: ["email", "id", "name"],
    }
    for index, columns in own.items():
        if backend == "mariadb":
            assert found[index]["column_names"] == columns
        else:
            assert index not in found
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


@pytest.mark.backends("mariadb")  # character sets are a MariaDB/MySQL matter
def test_users_table_is_utf8mb4_on_mariadb(backend: str, tmp_path: Path) -> None:
    url = create_fresh_database(backend, tmp_path, "_mig_charset")
    migrate(url)

    assert users_table_character_sets(url) == UTF8MB4_USERS_TABLE


@pytest.mark.backends("mariadb")  # character sets are a MariaDB/MySQL matter
def test_users_table_is_utf8mb4_on_mariadb_whatever_the_database_default(
    backend: str, tmp_path: Path
) -> None:
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


BEFORE_STORED_FORMS = "e4b7c19a2d63"
OLD_FORM_USERS = [
    # (id as 32 hex digits, name, created_at as SQLite kept it before)
    ("0a1b2c3d4e5f40718293a4b5c6d7e8f9", "Ada Lovelace", "2026-01-02 03:04:05.000006"),
    ("ffeeddccbbaa49887766554433221100", "Grace Hopper", "2026-01-02 03:04:05.123456"),
]


def test_sqlite_ids_and_timestamps_move_to_the_api_form_and_back(tmp_path: Path) -> None:
    """Revision 9d3e6f1a2b7c rewrites SQLite's ids (dashed) and timestamps
    ('T', 'Z') in every table; the copies keep the name index, the change
    log's counter above a pruned seq, and the links' cascade and primary
    key table; its downgrade restores the old forms exactly."""
    url = create_fresh_database("sqlite", tmp_path, "_mig_forms")
    upgrade(url, BEFORE_STORED_FORMS)
    with engine_for(url) as engine, engine.begin() as connection:
        for user_id, name, created in OLD_FORM_USERS:
            connection.execute(
                text(
                    "INSERT INTO users (id, name, email, age, created_at, updated_at, version) "
                    "VALUES (:id, :name, :email, 30, :at, :at, 1)"
                ),
                {"id": user_id, "name": name, "email": f"{user_id}@example.com", "at": created},
            )
            connection.execute(
                text(
                    "INSERT INTO user_changes (action, user_id, version, at, caller, request_id, "
                    "changed, user) VALUES ('create', :id, 1, :at, 'c', 'r', '[]', NULL)"
                ),
                {"id": user_id, "at": created},
            )
        connection.execute(text("DELETE FROM user_changes WHERE seq = 2"))  # retention
        connection.execute(
            text(
                "INSERT INTO idempotency_keys (caller, endpoint, key, request_hash, created_at) "
                "VALUES ('c', 'POST /users', 'k', :hash, :at)"
            ),
            {"hash": "0" * 64, "at": OLD_FORM_USERS[0][2]},
        )
        connection.execute(
            text(
                "INSERT INTO idempotency_key_users (user_id, caller, endpoint, key) "
                "VALUES (:id, 'c', 'POST /users', 'k')"
            ),
            {"id": OLD_FORM_USERS[0][0]},
        )
    before = _stored_rows(url)

    migrate(url)

    with engine_for(url) as engine, engine.begin() as connection:
        stored = connection.execute(text("SELECT id, created_at FROM users ORDER BY id")).all()
        assert stored == [
            (str(uuid.UUID(user_id)), created.replace(" ", "T") + "Z")
            for user_id, _, created in OLD_FORM_USERS
        ]
        assert connection.execute(text("SELECT user_id, at FROM user_changes")).all() == [
            (str(uuid.UUID(OLD_FORM_USERS[0][0])), OLD_FORM_USERS[0][2].replace(" ", "T") + "Z")
        ]
        assert connection.execute(text("SELECT created_at FROM idempotency_keys")).scalar() == (
            OLD_FORM_USERS[0][2].replace(" ", "T") + "Z"
        )
        found = connection.execute(
            text(
                "SELECT users.name FROM users_name_fts JOIN users "
                "ON users.rowid = users_name_fts.rowid WHERE users_name_fts MATCH 'hopper'"
            )
        ).all()
        assert found == [("Grace Hopper",)]
        # The counter stayed above the pruned seq 2: the next change is 3.
        connection.execute(
            text(
                "INSERT INTO user_changes (action, user_id, version, at, caller, request_id, "
                "changed) VALUES ('delete', :id, 2, :at, 'c', 'r', '[]')"
            ),
            {"id": stored[0][0], "at": stored[0][1]},
        )
        assert connection.execute(text("SELECT max(seq) FROM user_changes")).scalar() == 3
        connection.execute(text("DELETE FROM user_changes WHERE seq = 3"))
        links = connection.execute(
            text("SELECT sql FROM sqlite_master WHERE name = 'idempotency_key_users'")
        ).scalar()
        assert "WITHOUT ROWID" in str(links)
        assert inspect(connection).get_foreign_keys("idempotency_key_users")[0]["options"] == {
            "ondelete": "CASCADE"
        }
    check(url)

    downgrade(url, BEFORE_STORED_FORMS)

    assert _stored_rows(url) == before


def _stored_rows(url: str) -> dict[str, list[Any]]:
    with engine_for(url) as engine, engine.connect() as connection:
        return {
            table_name: list(connection.execute(text(f"SELECT * FROM {table_name} ORDER BY 1, 2")))
            for table_name in ("users", "user_changes", "idempotency_keys", "idempotency_key_users")
        }
