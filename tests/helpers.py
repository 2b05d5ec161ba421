"""Small helpers shared by the API tests."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response

_serial = itertools.count(1)


def create_user(client: TestClient, **overrides: Any) -> dict[str, Any]:
    """POST a valid user (unique email unless given) and return its JSON."""
    serial = next(_serial)
    body = {"name": f"User {serial}", "email": f"user{serial}@example.com", "age": 30}
    body.update(overrides)
    response = client.post("/users", json=body)
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


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
