"""The service as a real uvicorn process: restarts, SIGTERM, refusing bad settings."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.databases import create_fresh_database, migrate
from tests.server import (
    REPO_ROOT,
    SERVE_COMMAND,
    RunningServer,
    free_port,
    running_server,
    service_env,
)

SHUTDOWN_DEADLINE_SECONDS = 30
REFUSAL_DEADLINE_SECONDS = 20


def stop_with_sigterm(server: RunningServer) -> int:
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=SHUTDOWN_DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit within {SHUTDOWN_DEADLINE_SECONDS} s of SIGTERM:\n{server.log()}")


def create_user(server: RunningServer) -> httpx.Response:
    created = httpx.post(
        f"{server.base_url}/users",
        json={"name": "Grace Hopper", "email": "grace@example.com", "age": 85},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    return created


def test_sigterm_stops_server_with_exit_code_0(backend: str, tmp_path: Path) -> None:
    url = create_fresh_database(backend, tmp_path, "_server_sigterm")
    migrate(url)

    with running_server(url, tmp_path / "server.log") as server:
        create_user(server)
        returncode = stop_with_sigterm(server)

    assert returncode == 0, server.log()


def test_user_created_before_restart_is_read_back_unchanged(backend: str, tmp_path: Path) -> None:
    url = create_fresh_database(backend, tmp_path, "_server_restart")
    migrate(url)

    with running_server(url, tmp_path / "first.log") as server:
        created = create_user(server)
        stop_with_sigterm(server)

    with running_server(url, tmp_path / "second.log") as server:
        fetched = httpx.get(f"{server.base_url}{created.headers['location']}", timeout=10)

    assert fetched.status_code == 200
    assert fetched.json() == created.json()
    assert fetched.headers["etag"] == created.headers["etag"]


def refuse_to_serve(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    # The variables go in before the suite's cursor secret is added, so a
    # production refusal sees no secret at all.
    env = service_env(
        **{
            "DATABASE_URL": f"sqlite:///{tmp_path / 'refused.db'}",
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "ENVIRONMENT": "test",
            **variables,
        }
    )
    return subprocess.run(
        SERVE_COMMAND,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=REFUSAL_DEADLINE_SECONDS,
        check=False,
    )


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        pytest.param({"PORT": "notaport"}, "PORT", id="port-not-a-number"),
        pytest.param({"PORT": "70000"}, "PORT", id="port-out-of-range"),
        pytest.param({"DB_POOL_SIZE": "0"}, "DB_POOL_SIZE", id="pool-size-zero"),
        pytest.param(
            {"ENVIRONMENT": "production"}, "CURSOR_SECRET.*API_KEYS", id="production-no-secret"
        ),
        pytest.param(
            {"ENVIRONMENT": "production", "CURSOR_SECRET": "", "API_KEYS": "w:" + "k" * 16},
            "CURSOR_SECRET",
            id="production-empty-secret",
        ),
        pytest.param({"DATABASE_URL": "oracle://u@h/db"}, "DATABASE_URL", id="unsupported-db"),
        pytest.param(
            {"ENVIRONMENT": "production", "CURSOR_SECRET": "s" * 32, "API_KEYS": "w:1"},
            "API_KEYS",
            id="production-short-key",
        ),
    ],
)
def test_serve_refuses_bad_setting_naming_it_without_traceback(
    tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    result = refuse_to_serve(tmp_path, **variables)

    assert result.returncode != 0
    assert re.search(rf"\b{named}\b", result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_serve_never_shows_the_database_password(tmp_path: Path) -> None:
    # Unencoded, the '@' would make the host "zqxj@127.0.0.1": refused at start.
    refused = refuse_to_serve(
        tmp_path, DATABASE_URL="postgresql://postgres:hunter2@zqxj@127.0.0.1:5432/users"
    )
    assert refused.returncode != 0 and "DATABASE_URL" in refused.stderr
    # Encoded, on a server that is down: 503s and their log lines.
    url = f"postgresql://postgres:hunter2%40zqxj@127.0.0.1:{free_port()}/users"
    with running_server(url, tmp_path / "server.log") as server:
        readiness = httpx.get(f"{server.base_url}/readyz", timeout=10)
        listing = httpx.get(f"{server.base_url}/users", timeout=10)
        assert stop_with_sigterm(server) == 0
        log = server.log()

    assert (readiness.status_code, readiness.json()["database"]) == (503, "unreachable")
    assert listing.status_code == 503
    assert "database unavailable" in log
    for shown in (refused.stdout, refused.stderr, readiness.text, listing.text, log):
        assert "hunter2" not in shown and "zqxj" not in shown
