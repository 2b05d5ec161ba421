"""SIGTERM on a real process with a request genuinely in flight.

The test holds a lock in the database from its own connection (the user's
row `FOR UPDATE` on PostgreSQL and MariaDB, the write lock `BEGIN
IMMEDIATE` on SQLite), so a PATCH sent to the server blocks inside its
transaction; then it sends SIGTERM.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from tests.databases import create_fresh_database, migrate
from tests.helpers import assert_problem
from tests.server import RunningServer, running_server
from users_service.models import users
from users_service.settings import load_settings

REFUSAL_DEADLINE_SECONDS = 5.0
# How long the test keeps the request blocked after SIGTERM before releasing it.
HELD_AFTER_SIGTERM_SECONDS = 1.0
# A start-up and shutdown of the interpreter fit in this, on a busy machine.
EXIT_SLACK_SECONDS = 5.0


@contextmanager
def holding_lock_on(backend: str, url: str, user_id: str) -> Iterator[None]:
    """Hold, from the test's own connection, a lock a PATCH of `user_id` must wait for."""
    if backend == "sqlite":
        database = make_url(url).database
        assert database is not None
        writer = sqlite3.connect(database, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            yield
            writer.execute("ROLLBACK")
        finally:
            writer.close()
        return
    engine = create_engine(load_settings(database_url=url).sqlalchemy_url)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            row = connection.execute(
                select(users.c.id).where(users.c.id == uuid.UUID(user_id)).with_for_update()
            ).first()
            assert row is not None
            yield
            transaction.rollback()
    finally:
        engine.dispose()


def lock_waiters(backend: str, url: str) -> int:
    """How many sessions of the database wait for a row lock (not knowable on SQLite)."""
    queries = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'",
        # The server's statement on the locked row, still running (InnoDB
        # does not always list it as LOCK WAIT at once).
        "mariadb": "SELECT count(*) FROM information_schema.processlist "
        "WHERE db = DATABASE() AND id <> CONNECTION_ID() AND command = 'Query' "
        "AND info LIKE '%FOR UPDATE%'",
    }
    engine = create_engine(load_settings(database_url=url).sqlalchemy_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(queries[backend])).scalar_one())
    finally:
        engine.dispose()


def wait_until_blocked(backend: str, url: str, request: Future[Any]) -> None:
    """Return once the server's transaction waits on the test's lock."""
    deadline = time.monotonic() + 10
    if backend == "sqlite":
        # SQLite shows no waiters: give the server ample time to reach the lock.
        time.sleep(1.0)
    else:
        while lock_waiters(backend, url) == 0:
            assert time.monotonic() < deadline, "the PATCH never waited on the lock"
            time.sleep(0.05)
    assert not request.done(), request.result()


def wait_until_refused(server: RunningServer) -> None:
    """Return once a new connection to the server is refused."""
    deadline = time.monotonic() + REFUSAL_DEADLINE_SECONDS
    while True:
        try:
            httpx.get(f"{server.base_url}/healthz", timeout=1.0)
        except httpx.ConnectError:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"still accepting connections {REFUSAL_DEADLINE_SECONDS} s after SIGTERM")
        time.sleep(0.05)


def stored_user(url: str, user_id: str) -> dict[str, Any]:
    engine = create_engine(load_settings(database_url=url).sqlalchemy_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.id == uuid.UUID(user_id))).one()
            return dict(row._mapping)
    finally:
        engine.dispose()


def start_with_user(
    backend: str, tmp_path: Path, suffix: str, grace_seconds: int
) -> tuple[str, dict[str, str]]:
    url = create_fresh_database(backend, tmp_path, suffix)
    migrate(url)
    return url, {"SHUTDOWN_GRACE_SECONDS": str(grace_seconds), "SQLITE_BUSY_TIMEOUT_MS": "60000"}


def create_user(server: RunningServer) -> dict[str, Any]:
    created = httpx.post(
        f"{server.base_url}/users",
        json={"name": "Grace Hopper", "email": "grace@example.com", "age": 85},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    user: dict[str, Any] = created.json()
    return user


def patch_name(server: RunningServer, user_id: str, name: str) -> httpx.Response:
    return httpx.patch(f"{server.base_url}/users/{user_id}", json={"name": name}, timeout=60)


def test_sigterm_refuses_new_connections_and_finishes_request_in_flight(
    backend: str, tmp_path: Path
) -> None:
    url, env = start_with_user(backend, tmp_path, "_shutdown_drain", grace_seconds=30)

    with (
        running_server(url, tmp_path / "server.log", env) as server,
        ThreadPoolExecutor(1) as pool,
    ):
        user = create_user(server)
        with holding_lock_on(backend, url, user["id"]):
            patch = pool.submit(patch_name, server, user["id"], "Amazing Grace")
            wait_until_blocked(backend, url, patch)
            server.process.send_signal(signal.SIGTERM)
            wait_until_refused(server)
            time.sleep(HELD_AFTER_SIGTERM_SECONDS)
            assert not patch.done(), patch.result()
            assert server.process.poll() is None, server.log()
            released = time.monotonic()
        response = patch.result(timeout=30)
        try:
            returncode = server.process.wait(timeout=EXIT_SLACK_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit {EXIT_SLACK_SECONDS} s after the last request:\n{server.log()}")
        exited_after = time.monotonic() - released

    print(f"\n[{backend}] exited {exited_after:.2f} s after the request in flight was released")
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Amazing Grace"
    assert response.json()["version"] == 2
    assert returncode == 0, server.log()
    assert "still busy" not in server.log()
    stored = stored_user(url, user["id"])
    assert (stored["name"], stored["version"]) == ("Amazing Grace", 2)


def test_request_running_past_the_grace_period_does_not_keep_the_process_alive(
    backend: str, tmp_path: Path
) -> None:
    grace = 1
    url, env = start_with_user(backend, tmp_path, "_shutdown_grace", grace_seconds=grace)

    with (
        running_server(url, tmp_path / "server.log", env) as server,
        ThreadPoolExecutor(1) as pool,
    ):
        user = create_user(server)
        with holding_lock_on(backend, url, user["id"]):
            patch = pool.submit(patch_name, server, user["id"], "Abandoned")
            wait_until_blocked(backend, url, patch)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            try:
                returncode = server.process.wait(timeout=grace + EXIT_SLACK_SECONDS)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"still running {grace + EXIT_SLACK_SECONDS} s after SIGTERM with a "
                    f"{grace} s grace:\n{server.log()}"
                )
            exited_after = time.monotonic() - signalled
            response = patch.result(timeout=10)
        log = server.log()

    print(f"\n[{backend}] exited {exited_after:.2f} s after SIGTERM with a {grace} s grace")
    assert returncode == 0, log
    assert exited_after >= grace
    # The request was cut off with a 503 that says so...
    problem = assert_problem(response, 503, "service_unavailable")
    assert "shut down" in problem["detail"]
    assert response.headers["retry-after"]
    assert "request abandoned at shutdown" in log, log
    if backend == "mariadb":  # its statements block a worker thread, which cannot be cancelled
        assert re.search(r"\d+ worker thread\(s\) still busy after the 1 s shutdown grace", log)
    assert "Traceback" not in log, log
    # ...and its transaction never committed.
    stored = stored_user(url, user["id"])
    assert (stored["name"], stored["version"]) == ("Grace Hopper", 1)
