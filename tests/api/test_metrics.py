"""GET /metrics: Prometheus text, counted by route template, across workers."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import create_ada


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "http_requests",
        "http_request_duration_seconds",
        "users_created",
        "users_updated",
        "users_deleted",
        "db_pool_connections",
        "db_pool_wait_seconds",
        "db_pool_timeouts",
        "http_requests_in_flight",
        "build_info",
        "rate_limit_fallbacks",
    } <= names


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    user = create_ada(client)
    before = client.get("/metrics").text

    for _ in range(3):
        assert client.get(f"/users/{user['id']}").status_code == 200
    client.get("/users/00000000-0000-4000-8000-000000000000")
    client.get("/no-such-page")
    after = client.get("/metrics").text

    route = {"method": "GET", "route": "/users/{user_id}", "caller": "anonymous"}
    assert (
        value(after, "http_requests_total", **route, status="200")
        - value(before, "http_requests_total", **route, status="200")
        == 3
    )
    assert (
        value(after, "http_requests_total", **route, status="404")
        - value(before, "http_requests_total", **route, status="404")
        == 1
    )
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404", "caller": "anonymous"}
    assert (
        value(after, "http_requests_total", **unmatched)
        - value(before, "http_requests_total", **unmatched)
        == 1
    )
    # No label carries a concrete id: the route is the template.
    assert user["id"] not in after
    count = "http_request_duration_seconds_count"
    assert value(after, count, **route) - value(before, count, **route) == 4


def test_user_writes_are_counted(client: TestClient) -> None:
    before = client.get("/metrics").text

    user = create_ada(client)
    client.post("/users/batch", json={"users": [
        {"name": "B", "email": "b@example.com", "age": 1},
        {"name": "C", "email": "c@example.com", "age": 2},
    ]})  # fmt: skip
    client.patch(f"/users/{user['id']}", json={"age": 37})
    client.put(f"/users/{user['id']}", json={"name": "Ada", "email": user["email"], "age": 38})
    client.delete(f"/users/{user['id']}")
    client.delete(f"/users/{user['id']}")  # 404: not counted
    after = client.get("/metrics").text

    def grew(name: str) -> float:
        return value(after, name) - value(before, name)

    assert (grew("users_created_total"), grew("users_updated_total")) == (3, 2)
    assert grew("users_deleted_total") == 1


def test_pool_use_is_sampled(client: TestClient) -> None:
    time.sleep(0.7)  # sampled every half second
    text = client.get("/metrics").text

    in_use = value(text, "db_pool_connections", state="in_use")
    idle = value(text, "db_pool_connections", state="idle")
    assert in_use >= 0 and idle >= 0
    assert ("db_pool_connections", frozenset({("state", "idle")})) in samples(text)
