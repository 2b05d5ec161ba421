"""Small helpers shared by the tests."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import itertools
import json
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from fastapi.testclient import TestClient
from httpx import Response

from users_service.seed import synthetic_users
from users_service.settings import DEVELOPMENT_CURSOR_SECRET

_serial = itertools.count(1)

# The keys of the `keyed_app` fixture (tests/conftest.py).
WRITER_KEY = "w-key-123"
READER_KEY = "r-key-456"
WRITER = {"Authorization": f"Bearer {WRITER_KEY}"}
READER = {"Authorization": f"Bearer {READER_KEY}"}
T = TypeVar("T")


def create_user(client: TestClient, **overrides: Any) -> dict[str, Any]:
    """POST a valid user (unique email unless given) and return its JSON."""
    serial = next(_serial)
    body = {"name": f"User {serial}", "email": f"user{serial}@example.com", "age": 30}
    body.update(overrides)
    response = client.post("/users", json=body)
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "age": 36}


def create_ada(client: TestClient, **fields: Any) -> dict[str, Any]:
    """POST Ada (or Ada with `fields` changed) and return the JSON."""
    response = client.post("/users", json={**ADA, **fields})
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


def write_path(client: TestClient, method: str) -> str:
    """Where `method` writes a user: the collection, or an existing user."""
    if method == "POST":
        return "/users"
    return f"/users/{create_ada(client, email='existing@example.com')['id']}"


def assert_problem(response: Response, status: int, code: str) -> dict[str, Any]:
    """Check that `response` is the problem `status`/`code`; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["code"] == code
    assert problem["status"] == status
    return problem


def parse_timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


def user_count(client: TestClient, **headers: str) -> int:
    """How many users exist (GET /users?include_total=true)."""
    response = client.get("/users", params={"include_total": "true", "limit": 1}, headers=headers)
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


def p99(samples: list[float]) -> float:
    """The 99th percentile of `samples` (the value 99% of them are at or under)."""
    return sorted(samples)[int(len(samples) * 0.99)]


def race(count: int, request: Callable[[int], T]) -> list[T]:
    """`count` calls of `request(i)`, each on its own thread, released together."""
    barrier = threading.Barrier(count, timeout=30)

    def run(index: int) -> T:
        barrier.wait()
        return request(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def forged_cursor(
    payload: object, order: object, context: str, secret: str = DEVELOPMENT_CURSOR_SECRET
) -> str:
    """A cursor holding `payload`, validly signed with `secret` for the sort
    `order` and the filters `context`: what anyone who knows the secret can
    make (the built-in secret is public)."""
    key = hashlib.sha256(b"users-service cursor\0" + secret.encode()).digest()
    data = json.dumps(payload, separators=(",", ":")).encode()  # big ints too
    signature = hmac.new(key, data + b"\0" + f"{order}|{context}".encode(), hashlib.sha256)

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{b64(data)}.{b64(signature.digest()[:16])}"


def write_users_csv(path: Path, count: int) -> None:
    """`count` synthetic users (always the same ones) as an import file: name, email, age."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", "email", "age"])
        for user in synthetic_users(count, seed=1):
            writer.writerow([user["name"], user["email"], user["age"]])


# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, the segments with data
# that this socket has received (Linux 4.6 and later).
TCP_INFO_DATA_SEGS_IN = 152


def data_segments_received(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[TCP_INFO_DATA_SEGS_IN : TCP_INFO_DATA_SEGS_IN + 4], "little")
