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
EMAIL = "grace.hopper@example.com"


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
    assert access[3]["caller"] == "anonymous"
    assert API_KEY not in log and "wrong-key" not in log
    assert EMAIL not in log and "example.com" not in log


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
        environment="production", cursor_secret="s" * 32, api_keys="a:k"
    ).effective_log_format
    development = load_settings(environment="development").effective_log_format
    chosen = load_settings(environment="production", cursor_secret="s" * 32, api_keys="a:k",
                           log_format="text").effective_log_format  # fmt: skip
    assert (production, development, chosen) == (LogFormat.json, LogFormat.text, LogFormat.text)


def test_log_level_warning_turns_the_access_log_off(tmp_path: Path) -> None:
    url = create_fresh_database("sqlite", tmp_path, "_quiet")
    migrate(url)
    app = create_app(load_settings(database_url=url, environment="test", log_level="WARNING"))
    middleware = [m for m in app.user_middleware if "access_log" in m.kwargs]
    assert [getattr(m.kwargs["access_log"], "enabled", None) for m in middleware] == [False]
    logging.getLogger().setLevel(logging.INFO)  # leave the suite's level as it was
