"""Running the service as a real process: `python -m users_service serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from users_service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVE_COMMAND = [sys.executable, "-m", "users_service", "serve"]
# Every setting the service reads: a test server starts from none of them.
SETTINGS_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# The cursor secret of ENVIRONMENT=test, where the built-in one is refused.
TEST_CURSOR_SECRET = "test-suite-cursor-secret-not-for-production"


def service_env(**variables: str) -> dict[str, str]:
    """The test process's environment without any service setting (nor an
    OTEL_* variable, which would turn tracing on), plus
    `variables` (and, for ENVIRONMENT=test, the suite's cursor secret)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in SETTINGS_VARIABLES and not name.upper().startswith("OTEL_")
    }
    env.update(variables)
    if env.get("ENVIRONMENT") == "test":
        env.setdefault("CURSOR_SECRET", TEST_CURSOR_SECRET)
    return env


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until_healthy(server: RunningServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"server exited with {server.process.returncode} before it was healthy:\n"
                + server.log()
            )
        try:
            response = httpx.get(f"{server.base_url}/healthz", timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if response.status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"server not healthy within {timeout} s:\n" + server.log())


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


@contextmanager
def running_server(
    database_url: str,
    log_path: Path,
    extra_env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Iterator[RunningServer]:
    """The service on `port` (else a free one) of 127.0.0.1, healthy; killed
    on exit if still running."""
    port = port or free_port()
    env = service_env(
        DATABASE_URL=database_url,
        HOST="127.0.0.1",
        PORT=str(port),
        ENVIRONMENT="test",
        **(extra_env or {}),
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            SERVE_COMMAND, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        stop(process)
