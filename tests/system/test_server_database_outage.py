"""PostgreSQL going away under the running service, and coming back.

Each test drives the service as a real process (tests/server.py) against a
throwaway PostgreSQL cluster that this module creates with initdb and stops
and starts with pg_ctl, so the shared server is never touched. While the
database is down, `/users` answers 503 `service_unavailable` with
Retry-After within a bounded time, `/readyz` 503 and `/healthz` 200; once it
is back, every request is served again without a restart: no stale pooled
connection turns into a 500.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, text

from tests.helpers import race
from tests.server import RunningServer, running_server
from tests.topology import (
    POSTGRES_BIN,
    ThrowawayPostgres,
    assert_unavailable,
    throwaway_postgres,
)
from users_service.models import users

CONNECT_TIMEOUT_SECONDS = 2
# Every answer while the database is down must come within the connect
# timeout, plus slack for a busy machine; a request that hangs fails this.
ANSWER_BOUND_SECONDS = CONNECT_TIMEOUT_SECONDS + 3.0
SERVER_ENV = {
    "DB_POOL_SIZE": "4",
    "DB_CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT_SECONDS),
    # Long enough never to be what answers here: the outage must be.
    "DB_STATEMENT_TIMEOUT_MS": "30000",
}
GRACE = {"name": "Grace Hopper", "email": "grace@example.com", "age": 85}

pytestmark = pytest.mark.skipif(
    not (POSTGRES_BIN / "initdb").exists(), reason=f"no PostgreSQL binaries in {POSTGRES_BIN}"
)


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    with throwaway_postgres("users-service-outage-") as cluster:
        yield cluster


@pytest.fixture
def cluster(postgres: ThrowawayPostgres) -> ThrowawayPostgres:
    """The module's cluster, running, with no users."""
    if not postgres.is_running():
        postgres.start()
    engine = direct_engine(postgres)
    with engine.begin() as connection:
        connection.execute(users.delete())
    engine.dispose()
    return postgres


def direct_engine(cluster: ThrowawayPostgres) -> Engine:
    """The test's own way into the cluster, beside the service."""
    return cluster.engine()


def timed(
    client: httpx.Client, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.request(method, path, **kwargs)
    return response, time.monotonic() - started


def assert_healthy_but_not_ready(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "database": "unreachable", "schema": "unknown"}


def every_users_request(user_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", "/users", {}),
        ("GET", f"/users/{user_id}", {}),
        ("POST", "/users", {"json": {**GRACE, "email": "other@example.com"}}),
        ("POST", "/users/batch", {"json": {"users": [{**GRACE, "email": "b@example.com"}]}}),
        ("PUT", f"/users/{user_id}", {"json": GRACE}),
        ("PATCH", f"/users/{user_id}", {"json": {"age": 86}}),
        ("DELETE", f"/users/{user_id}", {}),
    ]


def fill_pool(server: RunningServer, user_id: str) -> None:
    """Concurrent reads, so that the pool holds several connections to break."""

    def read(_index: int) -> int:
        return httpx.get(f"{server.base_url}/users/{user_id}", timeout=10).status_code

    assert race(8, read) == [200] * 8


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_users_answer_503_in_bounded_time_while_postgres_is_stopped_then_serve_again(
    cluster: ThrowawayPostgres, tmp_path: Path, mode: str
) -> None:
    with (
        running_server(cluster.url, tmp_path / "server.log", SERVER_ENV) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        user = client.post("/users", json=GRACE).json()
        fill_pool(server, user["id"])

        cluster.stop(mode)
        down = [
            timed(client, method, path, **kw)
            for method, path, kw in every_users_request(user["id"])
        ]
        assert_healthy_but_not_ready(client)

        started = time.monotonic()
        cluster.start()
        first, _ = timed(client, "GET", f"/users/{user['id']}")
        recovered_after = time.monotonic() - started
        after = race(8, lambda _i: httpx.get(f"{server.base_url}/users/{user['id']}", timeout=10))
        patched = client.patch(f"/users/{user['id']}", json={"age": 86})
        ready = client.get("/readyz")

    for response, _elapsed in down:
        assert_unavailable(response)
    slowest = max(elapsed for _response, elapsed in down)
    assert slowest < ANSWER_BOUND_SECONDS, [round(elapsed, 3) for _r, elapsed in down]
    # pg_ctl start returns once the server accepts connections: from then
    # on nothing fails, whatever the pool held before the outage.
    assert first.status_code == 200, first.text
    assert [response.status_code for response in after] == [200] * 8
    assert patched.status_code == 200 and patched.json()["version"] == 2
    assert ready.status_code == 200
    assert "unhandled error" not in server.log()
    print(
        f"\n[{mode}] slowest 503 while down: {slowest * 1000:.0f} ms; "
        f"first 200 {recovered_after * 1000:.0f} ms after pg_ctl start began"
    )


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_restart_with_no_request_between_leaves_no_broken_pooled_connection(
    cluster: ThrowawayPostgres, tmp_path: Path, mode: str
) -> None:
    with (
        running_server(cluster.url, tmp_path / "server.log", SERVER_ENV) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        user = client.post("/users", json=GRACE).json()
        fill_pool(server, user["id"])

        # Every pooled connection is now dead, and no request has seen it.
        cluster.stop(mode)
        cluster.start()
        after = race(8, lambda _i: httpx.get(f"{server.base_url}/users/{user['id']}", timeout=10))
        patched = client.patch(f"/users/{user['id']}", json={"age": 86})

    assert [response.status_code for response in after] == [200] * 8
    assert patched.status_code == 200, patched.text
    assert "unhandled error" not in server.log()


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_request_in_flight_when_postgres_stops_answers_503_and_writes_nothing(
    cluster: ThrowawayPostgres, tmp_path: Path, mode: str
) -> None:
    engine = direct_engine(cluster)
    with (
        running_server(cluster.url, tmp_path / "server.log", SERVER_ENV) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        ThreadPoolExecutor(max_workers=1) as pool_,
    ):
        user = client.post("/users", json=GRACE).json()
        # The test's own transaction locks the row, so the PATCH is still
        # running, waiting on the database, when the database goes away.
        holder = engine.connect()
        holder.execute(select(users).where(users.c.id == uuid.UUID(user["id"])).with_for_update())
        in_flight: Future[httpx.Response] = pool_.submit(
            client.patch, f"/users/{user['id']}", json={"age": 86}
        )
        wait_until_waiting_on_a_lock(engine)

        stopped = time.monotonic()
        cluster.stop(mode)
        response = in_flight.result(timeout=60)
        answered_after = time.monotonic() - stopped
        holder.invalidate()
        holder.close()

        cluster.start()
        fetched = client.get(f"/users/{user['id']}")

    engine.dispose()
    assert_unavailable(response)
    # pg_ctl stop waits for the server to exit, so the answer may already
    # have come before it returned; either way it came without a hang.
    assert answered_after < ANSWER_BOUND_SECONDS, answered_after
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == user
    assert "unhandled error" not in server.log()
    print(f"\n[{mode}] in-flight PATCH answered 503 {answered_after * 1000:.0f} ms after the stop")


def wait_until_waiting_on_a_lock(engine: Engine, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one()
            connection.rollback()
            if waiting:
                return
            time.sleep(0.05)
    raise AssertionError("the request never waited on the test's lock")


def test_service_started_while_postgres_is_down_becomes_ready_when_it_comes(
    cluster: ThrowawayPostgres, tmp_path: Path
) -> None:
    cluster.stop("fast")
    with (
        running_server(cluster.url, tmp_path / "server.log", SERVER_ENV) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        assert_healthy_but_not_ready(client)
        listed, elapsed = timed(client, "GET", "/users")
        assert_unavailable(listed)
        assert elapsed < ANSWER_BOUND_SECONDS

        started = time.monotonic()
        cluster.start()
        ready = client.get("/readyz")
        ready_after = time.monotonic() - started
        created = client.post("/users", json=GRACE)
        assert server.process.poll() is None

    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "database": "ok", "schema": "current"}
    assert created.status_code == 201, created.text
    print(f"\nready {ready_after * 1000:.0f} ms after pg_ctl start began")
