"""Tracing: a real server exports its spans over OTLP/HTTP to a receiver the
test runs, which decodes them (opentelemetry-proto); the trace the caller
sent in `traceparent` comes back in the spans and in the log lines."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.databases import create_fresh_database, migrate
from tests.server import running_server
from users_service_client import EmailTaken, UsersClient, forwarding

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
# Generous: the server exports every 100 ms and once more as it stops; a
# busy 2-core machine may still take seconds. It guards "spans arrive at all".
ARRIVAL_SECONDS = 20.0


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: keeps every span it is sent, decoded."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def keep(self, path: str, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.paths.append(path)
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(_decoded(span, resource))


def _decoded(span: Any, resource: dict[str, str]) -> dict[str, Any]:
    attributes = {}
    for attribute in span.attributes:
        value = attribute.value
        attributes[attribute.key] = getattr(value, value.WhichOneof("value"))
    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "kind": span.kind,
        "attributes": attributes,
        "service": resource.get("service.name"),
    }


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.keep(self.path, body)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


def test_spans_continue_the_callers_traceparent_and_log_lines_carry_it(
    tmp_path: Path, backend: str, receiver: Receiver
) -> None:
    url = create_fresh_database(backend, tmp_path, "_tracing")
    migrate(url)
    env = {
        "LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with running_server(url, tmp_path / "server.log", env) as server:
        with (
            UsersClient(server.base_url) as users,
            forwarding(request_id="order-7", traceparent=TRACEPARENT),
        ):
            user = users.create_user(name="Ada", email="ada@example.com", age=36)
            with pytest.raises(EmailTaken):  # the driver's message quotes the email
                users.create_user(name="Ada", email="ada@example.com", age=36)
        users_again = UsersClient(server.base_url)
        users_again.get_user(user.id)  # no traceparent: a trace of its own
        users_again.close()
        server.process.send_signal(signal.SIGTERM)  # flushes the spans left
        assert server.process.wait(timeout=30) == 0
        log = server.log()
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while time.monotonic() < deadline and len(_requests(receiver)) < 2:
        time.sleep(0.05)

    assert set(receiver.paths) == {"/v1/traces"}
    requests = _requests(receiver)
    create = next(span for span in requests if span["name"] == "POST /users")
    assert (create["trace_id"], create["parent_span_id"]) == (TRACE_ID, PARENT_SPAN_ID)
    assert create["attributes"]["http.route"] == "/users"
    assert create["attributes"]["http.response.status_code"] == 201
    assert create["attributes"]["users_service.request_id"] == "order-7"
    assert create["service"] == "users-service"
    statements = [span for span in receiver.spans if span["parent_span_id"] == create["span_id"]]
    assert statements, "no database span under the request's"
    assert all(span["kind"] == SPAN_KIND_CLIENT for span in statements)
    assert {span["attributes"]["db.system.name"] for span in statements} == {backend}
    assert "INSERT" in {span["attributes"]["db.operation.name"] for span in statements}
    assert "ada@example.com" not in json.dumps(receiver.spans)  # no values, no driver messages
    refused = next(
        span for span in requests if span["attributes"].get("http.response.status_code") == 409
    )
    failed = [span for span in receiver.spans if span["parent_span_id"] == refused["span_id"]]
    assert "UniqueViolation" in {span["attributes"].get("error.type") for span in failed}

    read = next(span for span in requests if span["name"] == "GET /users/{user_id}")
    assert read["trace_id"] != TRACE_ID and read["parent_span_id"] == ""

    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    access = {
        (line["route"], line["status"]): line
        for line in lines
        if line["logger"] == "users_service.access"
    }
    created, taken = access["/users", 201], access["/users", 409]
    assert created["request_id"] == taken["request_id"] == "order-7"
    assert (created["trace_id"], created["span_id"]) == (TRACE_ID, create["span_id"])
    assert (taken["trace_id"], taken["span_id"]) == (TRACE_ID, refused["span_id"])
    assert access["/users/{user_id}", 200]["trace_id"] == read["trace_id"]


def _requests(receiver: Receiver) -> list[dict[str, Any]]:
    """The SERVER spans of /users requests received so far."""
    with receiver.lock:
        return [
            span
            for span in receiver.spans
            if span["kind"] == SPAN_KIND_SERVER and span["name"].startswith(("POST", "GET /users"))
        ]
