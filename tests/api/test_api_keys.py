"""API_KEYS and API_READ_KEYS: who may call /users, and what stays open.

Authentication does not touch the database: the tests with keys configured
run once, on a SQLite database of their own.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.databases import create_fresh_database, migrate
from tests.helpers import READER, READER_KEY, WRITER, WRITER_KEY, assert_problem, user_count
from users_service.main import create_app
from users_service.settings import load_settings

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "age": 36}


@pytest.fixture
def existing(keyed: TestClient) -> dict[str, Any]:
    """A user made by the writer."""
    response = keyed.post("/users", json=ADA, headers=WRITER)
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


def call(
    client: TestClient,
    method: str,
    path: str,
    user_id: str,
    headers: dict[str, str],
    body: Any = None,
) -> httpx.Response:
    response: httpx.Response = client.request(
        method, path.format(id=user_id), json=body, headers=headers
    )
    return response


GRACE = {"name": "Grace Hopper", "email": "grace@example.com", "age": 85}
READS = [
    pytest.param("GET", "/users", None, id="list"),
    pytest.param("GET", "/users/{id}", None, id="get"),
]
WRITES = [
    pytest.param("POST", "/users", GRACE, id="create"),
    pytest.param("POST", "/users/batch", {"users": [GRACE]}, id="batch"),
    pytest.param("PUT", "/users/{id}", GRACE, id="replace"),
    pytest.param("PATCH", "/users/{id}", {"name": "Grace"}, id="update"),
    pytest.param("DELETE", "/users/{id}", None, id="delete"),
]


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer not-a-key", id="unknown-key"),
        pytest.param(f"Bearer {WRITER_KEY}x", id="key-with-a-suffix"),
        pytest.param(f"Bearer {WRITER_KEY[:-1]}", id="key-prefix"),
        pytest.param("Bearer ", id="bearer-without-key"),
        pytest.param(WRITER_KEY, id="key-without-scheme"),
        pytest.param(
            "Basic " + base64.b64encode(f"writer:{WRITER_KEY}".encode()).decode(),
            id="basic-scheme",
        ),
        pytest.param(f"Basic {WRITER_KEY}", id="basic-scheme-raw-key"),
        pytest.param(f"Token {WRITER_KEY}", id="other-scheme"),
    ],
)
@pytest.mark.parametrize(("method", "path", "body"), [*READS, *WRITES])
def test_without_a_valid_bearer_key_is_401_unauthorized_and_changes_nothing(
    keyed: TestClient,
    existing: dict[str, Any],
    authorization: str | None,
    method: str,
    path: str,
    body: Any,
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = call(keyed, method, path, existing["id"], headers, body)

    problem = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert problem["request_id"] == response.headers["x-request-id"]
    assert WRITER_KEY not in response.text
    assert keyed.get("/users", headers=WRITER).json()["items"] == [existing]


def test_reader_may_list_and_get(keyed: TestClient, existing: dict[str, Any]) -> None:
    listed = keyed.get("/users", headers=READER)
    fetched = keyed.get(f"/users/{existing['id']}", headers=READER)

    assert listed.status_code == 200, listed.text
    assert listed.json()["items"] == [existing]
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == existing


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_reader_writing_is_403_forbidden_and_changes_nothing(
    keyed: TestClient, existing: dict[str, Any], method: str, path: str, body: Any
) -> None:
    response = call(keyed, method, path, existing["id"], READER, body)

    problem = assert_problem(response, 403, "forbidden")
    assert problem["request_id"] == response.headers["x-request-id"]
    assert READER_KEY not in response.text
    assert keyed.get("/users", headers=READER).json()["items"] == [existing]


def test_writer_may_do_everything(keyed: TestClient) -> None:
    created = keyed.post("/users", json=ADA, headers=WRITER)
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    batch = keyed.post("/users/batch", json={"users": [GRACE]}, headers=WRITER)
    assert batch.status_code == 201, batch.text

    assert keyed.get(location, headers=WRITER).status_code == 200
    assert keyed.get("/users", headers=WRITER).json()["items"] == [
        created.json(),
        *batch.json()["items"],
    ]
    replaced = keyed.put(location, json={**ADA, "age": 37}, headers=WRITER)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["age"] == 37
    patched = keyed.patch(location, json={"age": 38}, headers=WRITER)
    assert patched.status_code == 200, patched.text
    assert patched.json()["age"] == 38
    assert keyed.delete(location, headers=WRITER).status_code == 204
    assert_problem(keyed.get(location, headers=WRITER), 404, "user_not_found")
    assert user_count(keyed, **WRITER) == 1


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"])
def test_health_and_documentation_stay_open_without_a_key(keyed: TestClient, path: str) -> None:
    response = keyed.get(path)

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("headers", "method", "path", "body", "status"),
    [
        pytest.param(WRITER, "GET", "/users/not-a-uuid", None, 422, id="writer-422"),
        pytest.param(WRITER, "POST", "/users", {"name": "x"}, 422, id="writer-invalid-body"),
        pytest.param(WRITER, "POST", "/users", ADA, 409, id="writer-409"),
        pytest.param(WRITER, "GET", "/users/{id}/nothing", None, 404, id="writer-404"),
        pytest.param(READER, "POST", "/users", ADA, 403, id="reader-403"),
        pytest.param(
            {"Authorization": f"Bearer {WRITER_KEY}-wrong"}, "GET", "/users", None, 401, id="401"
        ),
    ],
)
def test_problem_bodies_never_contain_the_key(
    keyed: TestClient,
    existing: dict[str, Any],
    headers: dict[str, str],
    method: str,
    path: str,
    body: Any,
    status: int,
) -> None:
    response = call(keyed, method, path, existing["id"], headers, body)

    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    for secret in (WRITER_KEY, READER_KEY, "w-key", "r-key"):
        assert secret not in response.text
        assert all(secret not in value for value in response.headers.values())


def test_logs_never_contain_a_key(
    keyed: TestClient, existing: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    keyed.get("/users", headers=READER)
    keyed.post("/users", json=GRACE, headers=READER)
    keyed.post("/users", json=ADA, headers=WRITER)
    keyed.patch(f"/users/{existing['id']}", json={"age": 1}, headers=WRITER)
    keyed.get("/users", headers={"Authorization": f"Bearer {WRITER_KEY}-wrong"})

    assert caplog.records, "no log records to check"
    for secret in ("w-key", "r-key"):
        assert secret not in caplog.text


def test_without_keys_configured_every_route_works_without_a_header(client: TestClient) -> None:
    created = client.post("/users", json=ADA)
    assert created.status_code == 201, created.text
    location = created.headers["location"]

    assert client.post("/users/batch", json={"users": [GRACE]}).status_code == 201
    assert client.get("/users").status_code == 200
    assert client.get(location).status_code == 200
    assert client.put(location, json={**ADA, "age": 37}).status_code == 200
    assert client.patch(location, json={"age": 38}).status_code == 200
    assert client.delete(location).status_code == 204
    assert user_count(client) == 1


# Rotating a caller's key: the new key is added beside the old one under the
# same caller name, callers move to it, then the old one is removed.
OLD_KEY = "billing-old-key-0123456789"
NEW_KEY = "billing-new-key-9876543210"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """create_app() points the root logger at this test's captured stderr:
    put the session's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_two_keys_of_one_caller_both_work_as_that_caller(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    url = create_fresh_database("sqlite", tmp_path)
    migrate(url)
    settings = load_settings(
        database_url=url,
        environment="test",
        log_format="json",
        api_keys=f"billing:{OLD_KEY},billing:{NEW_KEY},crm:crm-key-000000000",
    )
    old = {"Authorization": f"Bearer {OLD_KEY}", "Idempotency-Key": "rotation-1"}
    new = {"Authorization": f"Bearer {NEW_KEY}", "Idempotency-Key": "rotation-1"}
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as keyed:
        created = keyed.post("/users", json=ADA, headers=old)
        repeated = keyed.post("/users", json=ADA, headers=new)
        read = keyed.get(f"/users/{created.json()['id']}", headers=new)
    app.state.database.engine.dispose()

    assert created.status_code == 201, created.text
    # Idempotency keys belong to the caller: the new key sees the old one's.
    assert repeated.status_code == 201 and repeated.headers["idempotency-replayed"] == "true"
    assert read.status_code == 200, read.text
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    access = [line for line in lines if line["logger"] == "users_service.access"]
    assert [line["caller"] for line in access] == ["billing"] * 3, access
    assert OLD_KEY not in str(lines) and NEW_KEY not in str(lines)
