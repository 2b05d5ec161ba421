"""DB_STATEMENT_TIMEOUT_MS: no statement runs unbounded on PostgreSQL or MariaDB.

A statement is made slow for real: the test holds a lock that the API's own
statement has to wait for. Cut by the timeout, the request answers 503
`service_unavailable` with Retry-After, and the connection serves the next
request. SQLite has no statement timeout (SQLITE_BUSY_TIMEOUT_MS bounds its
lock waits), so these run on the server databases only.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, Executable, create_engine, pool, select, text

from tests.databases import create_fresh_database, migrate
from tests.helpers import assert_problem, create_ada
from users_service.api.problems import STATEMENT_TIMEOUT_DETAIL
from users_service.db.engine import create_db_engine
from users_service.main import create_app
from users_service.models import users
from users_service.settings import SettingsError, load_settings

TIMEOUT_MS = 1000
# Generous for a shared machine, and still far below the lock's hold time.
SLACK_SECONDS = 3.0
LOCK_HELD_SECONDS = 30.0


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        pytest.skip("SQLite has no statement timeout; SQLITE_BUSY_TIMEOUT_MS bounds lock waits")
    url = create_fresh_database(backend, tmp_path, "_statement_timeout")
    migrate(url)
    return url


@contextmanager
def client_on(database_url: str, timeout_ms: int) -> Iterator[TestClient]:
    settings = load_settings(
        database_url=database_url, environment="test", db_statement_timeout_ms=timeout_ms
    )
    app = create_app(settings)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        app.state.database.engine.dispose()


@contextmanager
def lock_held(database_url: str, statement: Executable) -> Iterator[threading.Event]:
    """Run `statement` in a transaction of the test's own and keep it open
    until the block ends or the returned event is set."""
    engine = create_engine(
        load_settings(database_url=database_url).sqlalchemy_url, poolclass=pool.NullPool
    )
    release = threading.Event()
    locked = threading.Event()

    def hold() -> None:
        with engine.connect() as connection:
            connection.execute(statement)
            locked.set()
            release.wait(LOCK_HELD_SECONDS)
            connection.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10), "the test could not take its lock"
        yield release
    finally:
        release.set()
        holder.join()
        engine.dispose()


def table_lock(backend: str) -> Executable:
    if backend == "postgresql":
        return text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    return text("LOCK TABLES users WRITE")


def row_lock(user_id: str) -> Executable:
    return select(users).where(users.c.id == uuid.UUID(user_id)).with_for_update()


def test_write_waiting_on_a_row_lock_past_the_timeout_answers_503(database_url: str) -> None:
    with client_on(database_url, TIMEOUT_MS) as client:
        user = create_ada(client)
        with lock_held(database_url, row_lock(user["id"])):
            started = time.monotonic()
            response = client.patch(f"/users/{user['id']}", json={"age": 37})
            elapsed = time.monotonic() - started

        problem = assert_problem(response, 503, "service_unavailable")
        assert int(response.headers["retry-after"]) > 0
        assert TIMEOUT_MS / 1000 * 0.9 <= elapsed < TIMEOUT_MS / 1000 + SLACK_SECONDS, elapsed
        assert problem["detail"] == STATEMENT_TIMEOUT_DETAIL
        assert "SELECT" not in response.text
        # The lock is gone: the same connection pool serves the write now.
        again = client.patch(f"/users/{user['id']}", json={"age": 37})
        assert again.status_code == 200, again.text
        assert again.json()["age"] == 37


def test_read_waiting_on_a_table_lock_past_the_timeout_answers_503(
    database_url: str, backend: str
) -> None:
    with client_on(database_url, TIMEOUT_MS) as client:
        create_ada(client)
        with lock_held(database_url, table_lock(backend)):
            started = time.monotonic()
            response = client.get("/users")
            elapsed = time.monotonic() - started

        problem = assert_problem(response, 503, "service_unavailable")
        assert problem["detail"] == STATEMENT_TIMEOUT_DETAIL
        assert int(response.headers["retry-after"]) > 0
        assert TIMEOUT_MS / 1000 * 0.9 <= elapsed < TIMEOUT_MS / 1000 + SLACK_SECONDS, elapsed
        again = client.get("/users")
        assert again.status_code == 200, again.text
        assert len(again.json()["items"]) == 1


def test_statement_timeout_0_lets_a_statement_wait_for_the_lock(database_url: str) -> None:
    held_seconds = TIMEOUT_MS / 1000 * 2
    with client_on(database_url, 0) as client:
        user = create_ada(client)
        with lock_held(database_url, row_lock(user["id"])) as release:
            threading.Timer(held_seconds, release.set).start()
            started = time.monotonic()
            response = client.patch(f"/users/{user['id']}", json={"age": 37})
            elapsed = time.monotonic() - started

    assert response.status_code == 200, response.text
    assert elapsed >= held_seconds * 0.9


def session_statement_limit(engine: Engine) -> str:
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            return str(connection.execute(text("SHOW statement_timeout")).scalar_one())
        return str(connection.execute(text("SELECT @@max_statement_time")).scalar_one())


def test_statement_timeout_from_the_environment_is_set_on_every_connection(
    database_url: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "1234")
    engine = create_db_engine(load_settings(database_url=database_url))
    try:
        limits = {session_statement_limit(engine) for _ in range(3)}
    finally:
        engine.dispose()

    assert limits == ({"1234ms"} if backend == "postgresql" else {"1.234"})


@pytest.mark.backends("postgresql")  # startup options are PostgreSQL's
def test_statement_timeout_keeps_the_options_the_postgresql_url_gives(
    database_url: str, backend: str
) -> None:
    url = f"{database_url}?options=-c%20lock_timeout%3D4321"
    engine = create_db_engine(load_settings(database_url=url, db_statement_timeout_ms=1234))
    try:
        with engine.connect() as connection:
            lock_timeout = connection.execute(text("SHOW lock_timeout")).scalar_one()
        statement_timeout = session_statement_limit(engine)
    finally:
        engine.dispose()

    assert (lock_timeout, statement_timeout) == ("4321ms", "1234ms")


def test_negative_statement_timeout_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="DB_STATEMENT_TIMEOUT_MS"):
        load_settings(db_statement_timeout_ms=-1)
