"""MAX_BODY_BYTES: a larger body is 413, declared or streamed; the service never reads past it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message

from tests.helpers import assert_problem, user_count
from users_service.main import create_app
from users_service.settings import load_settings

LIMIT = 2048
SOME_ID = "6f1c2a8e-4b7d-4e2a-9c3f-0d5e8a7b1c2d"


@pytest.fixture
def limited_app(client: TestClient, database_url: str) -> Iterator[FastAPI]:
    """An app with MAX_BODY_BYTES=2048; the users table emptied."""
    app = create_app(
        load_settings(database_url=database_url, environment="test", max_body_bytes=LIMIT)
    )
    yield app
    app.state.database.engine.dispose()


@pytest.fixture
def limited(limited_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(limited_app, raise_server_exceptions=False) as test_client:
        yield test_client


def json_of_size(value: dict[str, Any], size: int) -> bytes:
    """`value` as JSON padded with spaces to exactly `size` bytes."""
    body = json.dumps(value).encode()
    assert len(body) < size
    return body[:-1] + b" " * (size - len(body)) + b"}"


def chunks(body: bytes, size: int = 500) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def send(client: TestClient, method: str, path: str, body: bytes, chunked: bool) -> httpx.Response:
    """Send `body` with a Content-Length, or chunked (no length declared)."""
    response: httpx.Response = client.request(
        method,
        path,
        content=chunks(body) if chunked else body,
        headers={"Content-Type": "application/json", "X-Request-ID": "limit-check-1"},
    )
    return response


ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "age": 36}
ROUTES = [
    pytest.param("POST", "/users", id="create"),
    pytest.param("POST", "/users/batch", id="batch"),
    pytest.param("PUT", f"/users/{SOME_ID}", id="replace"),
    pytest.param("PATCH", f"/users/{SOME_ID}", id="update"),
]
HOW = [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")]


@pytest.mark.parametrize("chunked", HOW)
@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("size", [LIMIT + 1, 10 * LIMIT])
def test_body_over_the_limit_is_413_payload_too_large(
    limited: TestClient, method: str, path: str, chunked: bool, size: int
) -> None:
    body = json_of_size(ADA if path != "/users/batch" else {"users": [ADA]}, size)

    response = send(limited, method, path, body, chunked)

    problem = assert_problem(response, 413, "payload_too_large")
    assert problem["request_id"] == response.headers["x-request-id"] == "limit-check-1"
    assert set(problem) >= {"type", "title", "status", "detail", "code", "request_id"}
    assert user_count(limited) == 0


@pytest.mark.parametrize("chunked", HOW)
@pytest.mark.parametrize("method", ["DELETE", "GET"])
def test_body_over_the_limit_is_413_even_on_a_route_that_reads_no_body(
    limited: TestClient, method: str, chunked: bool
) -> None:
    created = limited.post("/users", json=ADA)
    assert created.status_code == 201, created.text
    location = created.headers["location"]

    response = send(limited, method, location, b" " * (LIMIT + 1000), chunked)

    assert_problem(response, 413, "payload_too_large")
    assert limited.get(location).json() == created.json()


@pytest.mark.parametrize("chunked", HOW)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(ADA, 201, id="valid"),
        pytest.param({**ADA, "age": "x"}, 422, id="invalid"),
    ],
)
@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT])
def test_body_within_the_limit_is_processed(
    limited: TestClient, body: dict[str, Any], status: int, chunked: bool, size: int
) -> None:
    response = send(limited, "POST", "/users", json_of_size(body, size), chunked)

    assert response.status_code == status, response.text
    assert user_count(limited) == (1 if status == 201 else 0)


def test_batch_within_the_limit_is_processed(limited: TestClient) -> None:
    users = [{**ADA, "email": f"ada{i}@example.com"} for i in range(3)]

    response = send(limited, "POST", "/users/batch", json_of_size({"users": users}, LIMIT), True)

    assert response.status_code == 201, response.text
    assert len(response.json()["items"]) == 3


def test_413_with_an_idempotency_key_is_not_kept(limited: TestClient) -> None:
    key = f"test-{uuid.uuid4()}"
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    too_large = limited.post("/users", content=json_of_size(ADA, LIMIT + 1), headers=headers)
    assert_problem(too_large, 413, "payload_too_large")

    response = limited.post("/users", content=json_of_size(ADA, LIMIT), headers=headers)

    assert response.status_code == 201, response.text
    assert response.headers.get("idempotency-replayed") is None


def test_streamed_body_is_not_read_past_the_limit(limited_app: FastAPI) -> None:
    """Fed an endless body, the app stops reading at the limit and answers 413."""
    chunk = b" " * 512
    chunks_read = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal chunks_read
        chunks_read += 1
        if chunks_read > 1000:  # the body would end here, 500 KiB on
            return {"type": "http.request", "body": b"}", "more_body": False}
        body = b'{"name": "Ada",' if chunks_read == 1 else chunk
        return {"type": "http.request", "body": body, "more_body": True}

    async def send_message(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/users",
        "raw_path": b"/users",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    asyncio.run(limited_app(scope, receive, send_message))

    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["code"] == "payload_too_large"
    # 15 + 3 * 512 = 1551 bytes after the fourth message; the fifth crosses
    # the limit (2063 > 2048) and is the last one read.
    assert chunks_read == 5
