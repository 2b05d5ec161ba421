"""The client docs' examples (docs/client.md) run, as written, against a real server."""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.helpers import user_count
from tests.server import REPO_ROOT, running_server

README_URL = "http://127.0.0.1:8000"
API_KEY = "readme-example-key"
FENCED_PYTHON = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def client_examples() -> list[str]:
    """The python blocks of docs/client.md, in order."""
    return FENCED_PYTHON.findall((REPO_ROOT / "docs" / "client.md").read_text(encoding="utf-8"))


def test_the_client_docs_have_sync_async_and_forwarding_examples() -> None:
    examples = client_examples()

    assert len(examples) == 3
    assert all(README_URL in example for example in examples)


def test_the_client_docs_examples_run_against_a_real_server(
    client: TestClient, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USERS_SERVICE_API_KEY", API_KEY)
    output = io.StringIO()

    with running_server(
        database_url, tmp_path / "server.log", {"API_KEYS": f"readme:{API_KEY}"}
    ) as server:
        for example in client_examples():
            code = compile(example.replace(README_URL, server.base_url), "docs/client.md", "exec")
            with contextlib.redirect_stdout(output):
                exec(code, {"__name__": "readme_example"})  # noqa: S102 - our own docs
        # Access lines are written at most half a second late; 10 s spares a busy machine.
        deadline = time.monotonic() + 10
        while "request_id=order-42" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = server.log()

    printed = output.getvalue().splitlines()
    assert printed[1] == "409 email_taken ('body', 'email')"
    assert printed[2:] == [
        "Grace Hopper 85",
        "Alan Turing 41",
        "2 3 True",
        # The feed: Ada's changes lost her email when she was deleted.
        "created None",
        "updated None",
        "updated None",
        "created grace@example.com",
        "created alan@example.com",
        "deleted None",
        "grace@example.com",
        "1",
    ]
    assert user_count(client) == 2  # Grace and Alan; Ada was deleted
    assert "GET /users 200 request_id=order-42 " in log  # forwarded by the third
