"""GET /metrics with several worker processes: the same totals whichever answers."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.api.test_metrics import value
from tests.databases import create_fresh_database, migrate
from tests.server import running_server


def test_two_workers_report_the_same_totals_whichever_answers(backend: str, tmp_path: Path) -> None:
    url = create_fresh_database(backend, tmp_path, "_metrics_workers")
    migrate(url)
    with running_server(url, tmp_path / "server.log", {"WORKERS": "2"}) as server:
        created = httpx.post(
            f"{server.base_url}/users", json={"name": "Ada", "email": "ada@example.com", "age": 36}
        )
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]
        for _ in range(40):  # a new connection each: the workers share them out
            assert httpx.get(f"{server.base_url}/users/{user_id}").status_code == 200
        totals = set()
        for _ in range(12):
            text = httpx.get(f"{server.base_url}/metrics").text
            totals.add(
                value(
                    text,
                    "http_requests_total",
                    method="GET",
                    route="/users/{user_id}",
                    status="200",
                    caller="anonymous",
                )
            )
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log()

    assert totals == {40.0}
