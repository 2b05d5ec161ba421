"""Liveness, readiness and the offline documentation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, pool, text

from tests.databases import create_fresh_database, migrate
from tests.helpers import assert_problem
from users_service.db.schema import alembic_config, head_revisions
from users_service.main import create_app
from users_service.settings import load_settings

UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/nothing"
READY = {"status": "ready", "database": "ok", "schema": "current"}
ATTRIBUTE_URL = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


@contextmanager
def client_on(database_url: str) -> Iterator[TestClient]:
    app = create_app(load_settings(database_url=database_url, environment="test"))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        app.state.database.engine.dispose()


def execute(database_url: str, statement: str) -> None:
    engine = create_engine(
        load_settings(database_url=database_url).sqlalchemy_url, poolclass=pool.NullPool
    )
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def test_healthz_says_ok(client: TestClient) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_on_migrated_database(client: TestClient) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == READY


def test_readyz_reports_schema_behind_on_database_never_migrated(
    backend: str, tmp_path: Path
) -> None:
    url = create_fresh_database(backend, tmp_path, "_readyz_empty")

    with client_on(url) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "unavailable", "database": "ok", "schema": "behind"}


def test_readyz_reports_schema_behind_after_downgrade_to_base(backend: str, tmp_path: Path) -> None:
    url = create_fresh_database(backend, tmp_path, "_readyz_base")
    migrate(url)
    config = alembic_config(url)
    config.attributes["configure_logger"] = False
    command.downgrade(config, "base")

    with client_on(url) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "schema": "behind"}


def test_readyz_reports_schema_behind_at_an_older_revision(backend: str, tmp_path: Path) -> None:
    oldest = ScriptDirectory.from_config(alembic_config()).get_base()
    if oldest in head_revisions():
        pytest.skip("only one migration: no older revision to stop at")
    url = create_fresh_database(backend, tmp_path, "_readyz_older")
    migrate(url, str(oldest))

    with client_on(url) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "schema": "behind"}


def test_readyz_reports_schema_ahead_on_unknown_revision(backend: str, tmp_path: Path) -> None:
    url = create_fresh_database(backend, tmp_path, "_readyz_ahead")
    migrate(url)
    execute(url, "UPDATE alembic_version SET version_num = 'ffffffffffff'")

    with client_on(url) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "schema": "ahead"}


def test_readyz_turns_ready_once_the_database_is_migrated(backend: str, tmp_path: Path) -> None:
    url = create_fresh_database(backend, tmp_path, "_readyz_later")

    with client_on(url) as client:
        before = client.get("/readyz")
        migrate(url)
        after = client.get("/readyz")

    assert before.status_code == 503
    assert after.status_code == 200
    assert after.json() == READY


@pytest.fixture(scope="module")
def unreachable_client() -> Iterator[TestClient]:
    with client_on(UNREACHABLE_DATABASE_URL) as client:
        yield client


def test_readyz_reports_unreachable_database(unreachable_client: TestClient) -> None:
    response = unreachable_client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "database": "unreachable",
        "schema": "unknown",
    }


def test_healthz_is_ok_while_database_is_unreachable(unreachable_client: TestClient) -> None:
    response = unreachable_client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/users", None),
        ("GET", "/users/5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10", None),
        ("POST", "/users", {"name": "Ada", "email": "ada@example.com", "age": 36}),
    ],
)
def test_users_answer_503_with_retry_after_while_database_is_unreachable(
    unreachable_client: TestClient, method: str, path: str, body: dict[str, object] | None
) -> None:
    response = unreachable_client.request(method, path, json=body)

    problem = assert_problem(response, 503, "service_unavailable")
    assert int(response.headers["retry-after"]) > 0
    assert problem["request_id"] == response.headers["x-request-id"]
    assert "127.0.0.1" not in response.text
    assert "psycopg" not in response.text.lower()


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_page_uses_only_assets_served_by_the_service(client: TestClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "cdn" not in html.lower()
    assets = ATTRIBUTE_URL.findall(html)
    assert any(asset.endswith(".js") for asset in assets), assets
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), asset
        fetched = client.get(asset)
        assert fetched.status_code == 200, asset
        assert len(fetched.content) > 1000, asset


def test_openapi_lists_every_users_operation(client: TestClient) -> None:
    response = client.get("/openapi.json")

    assert response.status_code == 200
    operations = {
        operation["operationId"]: (method.upper(), path)
        for path, item in response.json()["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }
    assert {
        name: operations.get(name)
        for name in (
            "create_user",
            "list_users",
            "get_user",
            "replace_user",
            "update_user",
            "delete_user",
        )
    } == {
        "create_user": ("POST", "/users"),
        "list_users": ("GET", "/users"),
        "get_user": ("GET", "/users/{user_id}"),
        "replace_user": ("PUT", "/users/{user_id}"),
        "update_user": ("PATCH", "/users/{user_id}"),
        "delete_user": ("DELETE", "/users/{user_id}"),
    }
