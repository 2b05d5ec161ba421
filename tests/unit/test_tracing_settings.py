"""When tracing is on (users_service.tracing): only when OTEL_* asks, and
never with a setting it cannot honour; off, OpenTelemetry is never loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.server import REPO_ROOT
from users_service.settings import SettingsError, load_settings
from users_service.tracing import tracing_problems, tracing_requested


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "users"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(environ: dict[str, str], on: bool) -> None:
    assert tracing_requested(environ) is on
    assert tracing_problems(environ) == []


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
            },
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ],
)
def test_what_tracing_cannot_honour_refuses_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], named: str
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError, match=rf"\b{named}\b"):
        load_settings(port="notaport")  # named with the other problems
    with pytest.raises(SettingsError, match=r"\bPORT\b"):
        load_settings(port="notaport")


def test_the_traces_protocol_overrides_the_general_one() -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert tracing_problems(environ) == []


def test_with_tracing_off_the_app_loads_nothing_of_opentelemetrys_sdk(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from users_service.main import create_app\n"
        "from users_service.settings import load_settings\n"
        f"create_app(load_settings(database_url='sqlite:///{tmp_path}/off.db'))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "CURSOR_SECRET": "x-private"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
