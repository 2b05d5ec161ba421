"""/metrics names the caller: a name from API_KEYS / API_READ_KEYS, `anonymous`
when keys are off, `unauthenticated` for a missing or refused key; never
anything a request made up. And build_info says what runs."""

from __future__ import annotations

import platform

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.api.test_metrics import samples, value
from tests.helpers import READER, WRITER
from users_service import __version__

LIST = {"method": "GET", "route": "/users"}
UNROUTED = {"method": "GET", "route": "<unmatched>"}  # refused before routing


def test_requests_are_counted_and_timed_by_caller(keyed: TestClient) -> None:
    before = keyed.get("/metrics").text

    for headers in (WRITER, WRITER, READER):
        assert keyed.get("/users", headers=headers).status_code == 200
    assert keyed.get("/users").status_code == 401
    unknown_keys = [f"made-up-key-{number}" for number in range(3)]
    for key in unknown_keys:
        assert keyed.get("/users", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    after = keyed.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("http_requests_total", **LIST, status="200", caller="writer") == 2
    assert grew("http_requests_total", **LIST, status="200", caller="reader") == 1
    assert grew("http_requests_total", **UNROUTED, status="401", caller="unauthenticated") == 4
    assert grew("http_request_duration_seconds_count", **LIST, caller="writer") == 2
    # The open routes are nobody's: anonymous, keys or not.
    assert value(after, "http_requests_total", method="GET", route="/metrics", status="200",
                 caller="anonymous") >= 1  # fmt: skip
    # What this test's requests counted (the registry is the process's: other
    # tests' apps have callers of their own).
    earlier = samples(before)
    callers = {
        dict(labels)["caller"]
        for (name, labels), figure in samples(after).items()
        if "caller" in dict(labels) and figure != earlier.get((name, labels))
    }
    assert callers == {"writer", "reader", "anonymous", "unauthenticated"}
    assert not any(key in after for key in unknown_keys)


def test_build_info_names_the_version_the_python_and_the_database(
    client: TestClient, app: FastAPI
) -> None:
    text = client.get("/metrics").text

    database = app.state.database.engine.dialect.name
    labels = {"version": __version__, "python": platform.python_version(), "database": database}
    assert value(text, "build_info", **labels) == 1


def test_requests_in_flight_counts_the_scrape_itself(client: TestClient) -> None:
    assert value(client.get("/metrics").text, "http_requests_in_flight") >= 1
