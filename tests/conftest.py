"""Fixtures: the real app on each real database the suite is given.

`client` is an httpx client (Starlette's TestClient) on the ASGI app, one
app per database for the whole session; each test starts from an empty
`users` table. `keyed` is the same on an app that requires API keys
(`WRITER_KEY`, `READER_KEY`). Tests that need their own database use
`databases.create_fresh_database`.

Tests come in three levels, by folder, each with its marker: `unit`
(functions, and the database layer on each database), `api` (the app in
process) and `system` (real processes, databases stopped and killed,
browsers). `make test-fast` runs the first two on SQLite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import delete

from tests.databases import backend_ids, create_fresh_database, migrate
from tests.helpers import READER_KEY, WRITER_KEY
from tests.server import TEST_CURSOR_SECRET
from users_service.main import create_app
from users_service.models import idempotency_keys, user_changes, users
from users_service.settings import Settings, load_settings

LEVELS = ("unit", "api", "system")
# The names a `backends` marker may give (tests/databases.backend_ids).
BACKENDS = ("sqlite", "postgresql", "mariadb")

# ENVIRONMENT=test refuses the built-in cursor secret: the suite's own, for
# the settings the tests load in process (tests/server.py gives it to servers).
os.environ.setdefault("CURSOR_SECRET", TEST_CURSOR_SECRET)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its level: the folder it is in. Deselect a test's
    parametrizations for the databases its `backends` marker does not name
    (a plan of one database's own, say), instead of skipping each."""
    kept, elsewhere = [], []
    for item in items:
        level = Path(str(item.path)).parent.name
        if level in LEVELS:
            item.add_marker(getattr(pytest.mark, level))
        marker = item.get_closest_marker("backends")
        if marker is not None and not set(marker.args) <= set(BACKENDS):
            # A misspelt name would deselect the test everywhere, silently.
            raise pytest.UsageError(f"{item.nodeid}: backends{marker.args} outside {BACKENDS}")
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if marker is not None and backend is not None and backend not in marker.args:
            elsewhere.append(item)
        else:
            kept.append(item)
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = kept


@pytest.fixture(scope="session", params=backend_ids())
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = create_fresh_database(backend, tmp_path_factory.mktemp(backend))
    migrate(url)
    return url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    # No access log: thousands of lines that would only bury a failure's own.
    return load_settings(database_url=database_url, environment="test", log_level="WARNING")


@pytest.fixture(scope="session")
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    application.state.database.engine.dispose()


@pytest.fixture(scope="session")
def session_client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def client(session_client: TestClient, app: FastAPI) -> TestClient:
    """A client on an app whose users table is empty."""
    with app.state.database.engine.begin() as connection:
        connection.execute(delete(users))
        connection.execute(delete(user_changes))
    return session_client


@pytest.fixture(scope="session")
def keyed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """An app with a writer and a reader key, on a SQLite database of its own
    (authentication does not touch the database)."""
    url = create_fresh_database("sqlite", tmp_path_factory.mktemp("api-keys"))
    migrate(url)
    app = create_app(
        load_settings(
            database_url=url,
            environment="test",
            log_level="WARNING",
            api_keys=f"writer:{WRITER_KEY}",
            api_read_keys=f"reader:{READER_KEY}",
        )
    )
    yield app
    app.state.database.engine.dispose()


@pytest.fixture
def keyed(keyed_app: FastAPI) -> Iterator[TestClient]:
    """A client on the keyed app, its tables emptied."""
    with keyed_app.state.database.engine.begin() as connection:
        for table in (users, idempotency_keys, user_changes):
            connection.execute(delete(table))
    with TestClient(keyed_app, raise_server_exceptions=False) as test_client:
        yield test_client
