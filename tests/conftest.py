"""Fixtures: the real app on each real database the suite is given.

`client` is an httpx client (Starlette's TestClient) on the ASGI app, one
app per database for the whole session; each test starts from an empty
`users` table. Tests that need their own database use
`databases.create_fresh_database`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import delete

from tests.databases import backend_ids, create_fresh_database, migrate
from users_service.main import create_app
from users_service.models import User
from users_service.settings import Settings, load_settings


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
    application.state.engine.dispose()


@pytest.fixture(scope="session")
def session_client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def client(session_client: TestClient, app: FastAPI) -> TestClient:
    """A client on an app whose users table is empty."""
    with app.state.engine.begin() as connection:
        connection.execute(delete(User.__table__))  # type: ignore[attr-defined]
    return session_client
