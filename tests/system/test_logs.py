"""Structured logs: one line per request, never a key or an email."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.databases import create_fresh_database, migrate
from tests.helpers import assert_problem
from tests.server import running_server
from users_service.logs import JSONFormatter, TextFormatter, stamp_request_id
from users_service.main import create_app
from users_service.settings import LogFormat, load_settings

API_KEY = "sekret-key-0123456789"
READ_KEY = "reader-key-0123456789"
EMAIL = "grace.hopper@example.com"
# A path segment that, written raw, would end the line and forge another:
# a DELETE by another caller (the finding of issue 17), then CR and ESC. No
# '/' (not even %2F): the path would no longer match /users/{user_id}.
FORGED = (
    "2026-11-30T02:00:00.000Z INFO users_service.access DELETE {user_id} 204 "
    "request_id=forged caller=admin duration_ms=1.0 user_id=6d285d42-3bcb-4896-bfc8-8cd88223e05b"
)
FORGED_PATH = "/users/x%0A" + FORGED.replace(" ", "%20") + "%0D%1B[2Jend"


def test_json_log_has_one_line_per_request_without_keys_or_emails(tmp_path: Path) -> None:
    url = create_fresh_database("sqlite", tmp_path, "_logs")
    migrate(url)
    env = {"LOG_FORMAT": "json", "API_KEYS": f"alpha:{API_KEY}"}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with running_server(url, tmp_path / "server.log", env) as server:
        created = httpx.post(
            f"{server.base_url}/users",
            json={"name": "Grace", "email": EMAIL, "age": 85},
            headers={**auth, "X-Request-ID": "create-grace"},
        )
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]
        httpx.get(f"{server.base_url}/users", params={"email": EMAIL}, headers=auth)
        httpx.get(f"{server.base_url}/users/{user_id}", headers=auth)
        httpx.get(f"{server.base_url}/users", headers={"Authorization": "Bearer wrong-key"})
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        log = server.log()

    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # all JSON
    access = [
        line
        for line in lines
        if line["logger"] == "users_service.access" and line["route"] != "/healthz"
    ]
    assert [(line["method"], line["route"], line["status"]) for line in access] == [
        ("POST", "/users", 201),
        ("GET", "/users", 200),
        ("GET", "/users/{user_id}", 200),
        ("GET", "<unmatched>", 401),  # refused before routing
    ]
    first = access[0]
    assert first["request_id"] == "create-grace"
    assert first["caller"] == "alpha"
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] > 0
    assert access[2]["user_id"] == user_id
    assert access[3]["caller"] == "unauthenticated"  # as in the metrics
    assert API_KEY not in log and "wrong-key" not in log
    assert EMAIL not in log and "example.com" not in log


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_forged_line_in_the_path_stays_one_escaped_line(tmp_path: Path, log_format: str) -> None:
    url = create_fresh_database("sqlite", tmp_path, "_forged")
    migrate(url)
    with running_server(url, tmp_path / "server.log", {"LOG_FORMAT": log_format}) as server:
        response = httpx.get(f"{server.base_url}{FORGED_PATH}", headers={"X-Request-ID": "sent"})
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        log = server.log()

    assert response.status_code == 422
    lines = log.splitlines()
    [line] = [line for line in lines if "request_id=sent" in line or '"request_id":"sent"' in line]
    assert not [line for line in lines if line.startswith("2026-11-30T02:00:00")]
    assert "\x1b" not in log and "\r" not in log
    if log_format == "json":
        assert json.loads(line)["user_id"] == f"x\n{FORGED}\r\x1b[2Jend"
    else:
        assert f'user_id="x\\n{FORGED}\\r\\x1b[2Jend"' in line


def test_access_lines_name_the_peer_the_forwarded_chain_of_a_trusted_proxy_and_a_refused_caller(
    tmp_path: Path,
) -> None:
    url = create_fresh_database("sqlite", tmp_path, "_peers")
    migrate(url)
    env = {
        "LOG_FORMAT": "json",
        "API_KEYS": f"alpha:{API_KEY}",
        "API_READ_KEYS": f"beta:{READ_KEY}",
    }
    chain = "203.0.113.7, 198.51.100.2"
    logs = {}
    # 127.0.0.1, where the test connects from, is a trusted proxy by default.
    for trusted in ("127.0.0.1", "10.9.9.9"):
        with running_server(
            url, tmp_path / f"{trusted}.log", {**env, "FORWARDED_ALLOW_IPS": trusted}
        ) as server:
            refused = httpx.post(
                f"{server.base_url}/users",
                json={"name": "Grace", "email": EMAIL, "age": 85},
                headers={"Authorization": f"Bearer {READ_KEY}", "X-Request-ID": "refused"},
            )
            assert refused.status_code == 403
            forwarded = httpx.get(
                f"{server.base_url}/healthz",
                headers={"X-Forwarded-For": chain, "X-Request-ID": "forwarded"},
            )
            assert forwarded.status_code == 200
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=30) == 0
            lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
            logs[trusted] = {line.get("request_id"): line for line in lines}

    assert logs["127.0.0.1"]["refused"]["caller"] == "beta"  # before: anonymous
    for line in (*logs["127.0.0.1"].values(), *logs["10.9.9.9"].values()):
        if line["logger"] == "users_service.access":
            assert line["peer"].startswith("127.0.0.1:")
            assert int(line["peer"].rpartition(":")[2]) > 0
    assert logs["127.0.0.1"]["forwarded"]["forwarded_for"] == chain
    assert "forwarded_for" not in logs["10.9.9.9"]["forwarded"]  # not a trusted proxy
    assert "forwarded_for" not in logs["127.0.0.1"]["refused"]  # nothing forwarded


@pytest.fixture
def failing_app(tmp_path: Path) -> FastAPI:
    url = create_fresh_database("sqlite", tmp_path, "_boom")
    migrate(url)
    app = create_app(load_settings(database_url=url, environment="test"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"could not reach {EMAIL}")

    return app


def test_an_unhandled_error_logs_its_traceback_with_the_request_id_and_answers_500(
    failing_app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(stamp_request_id)
    with TestClient(failing_app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "boom-1"})

    problem = assert_problem(response, 500, "internal_error")
    assert "Traceback" not in response.text and "RuntimeError" not in response.text
    assert EMAIL not in response.text
    [record] = [r for r in caplog.records if r.exc_info]
    line = json.loads(JSONFormatter().format(record))
    assert line["request_id"] == problem["request_id"] == "boom-1"
    assert "RuntimeError" in line["traceback"] and "Traceback" in line["traceback"]
    assert EMAIL not in line["traceback"] and EMAIL not in line["message"]
    text = TextFormatter().format(record)
    assert "request_id=boom-1" in text and EMAIL not in text


def test_production_logs_json_and_development_text() -> None:
    production = load_settings(
        environment="production", cursor_secret="s" * 32, api_keys=f"a:{API_KEY}"
    ).effective_log_format
    development = load_settings(environment="development").effective_log_format
    chosen = load_settings(
        environment="production", cursor_secret="s" * 32, api_keys=f"a:{API_KEY}", log_format="text"
    ).effective_log_format
    assert (production, development, chosen) == (LogFormat.json, LogFormat.text, LogFormat.text)


def test_log_level_warning_turns_the_access_log_off(tmp_path: Path) -> None:
    url = create_fresh_database("sqlite", tmp_path, "_quiet")
    migrate(url)
    app = create_app(load_settings(database_url=url, environment="test", log_level="WARNING"))
    middleware = [m for m in app.user_middleware if "access_log" in m.kwargs]
    assert [getattr(m.kwargs["access_log"], "enabled", None) for m in middleware] == [False]
    logging.getLogger().setLevel(logging.INFO)  # leave the suite's level as it was
