"""The connections of a real `serve` process: request heads bounded in size
and time, idle connections closed (api/connections.py), over real sockets.

No database is involved past start-up: SQLite only.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.databases import create_fresh_database, migrate
from tests.helpers import data_segments_received
from tests.server import RunningServer, running_server

MAX_HEADER_BYTES = 16 * 1024  # the default, not set here
HEADERS_TIMEOUT_SECONDS = 2
KEEP_ALIVE_TIMEOUT_SECONDS = 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("connections")
    url = create_fresh_database("sqlite", directory)
    migrate(url)
    env = {
        "HEADERS_TIMEOUT_SECONDS": str(HEADERS_TIMEOUT_SECONDS),
        "KEEP_ALIVE_TIMEOUT_SECONDS": str(KEEP_ALIVE_TIMEOUT_SECONDS),
    }
    with running_server(url, directory / "server.log", env) as running:
        yield running


def address(server: RunningServer) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").split(":")
    return host, int(port)


def connect(server: RunningServer, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(address(server), timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def parse_answer(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def assert_connection_problem(data: bytes, status: int, code: str) -> dict[str, object]:
    answer_status, headers, body = parse_answer(data)
    assert answer_status == status, data[:500]
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    problem: dict[str, object] = json.loads(body)
    assert problem["status"] == status and problem["code"] == code
    assert problem["request_id"] == headers["x-request-id"]
    return problem


def assert_logged(server: RunningServer, text: str) -> None:
    """`text` is in the log within a second (lines are written in batches)."""
    deadline = time.monotonic() + 1.5
    while text not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)


def head_of(size: int) -> bytes:
    """A GET /healthz whose head (request line to the blank line) is `size` bytes."""
    start = b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\nX-Pad: "
    end = b"\r\n\r\n"
    return start + b"p" * (size - len(start) - len(end)) + end


def resident_megabytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_head_of_max_header_bytes_is_served_and_one_byte_more_is_431(
    server: RunningServer,
) -> None:
    with connect(server) as sock:
        sock.sendall(head_of(MAX_HEADER_BYTES))
        status, _, body = parse_answer(read_until_closed(sock))
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    with connect(server) as sock:
        sock.sendall(head_of(MAX_HEADER_BYTES + 1))
        answer = read_until_closed(sock)
    problem = assert_connection_problem(answer, 431, "headers_too_large")
    assert str(MAX_HEADER_BYTES) in str(problem["detail"])


def test_a_100_mb_header_is_refused_at_once_while_memory_stays_flat_and_healthz_answers(
    server: RunningServer,
) -> None:
    before = resident_megabytes(server.process.pid)
    answer: list[bytes] = []
    took: list[float] = []

    def attack() -> None:
        with connect(server, timeout=30) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: ")
            chunk = b"a" * 1024 * 1024
            try:
                for _ in range(100):
                    sock.sendall(chunk)
            except OSError:
                pass  # closed once refused: the rest was never wanted
            answer.append(read_until_closed(sock))
            took.append(time.monotonic() - started)

    attacker = threading.Thread(target=attack)
    attacker.start()
    health_seconds: list[float] = []
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        while attacker.is_alive() or not health_seconds:
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            health_seconds.append(time.monotonic() - started)
    attacker.join()

    assert_connection_problem(answer[0], 431, "headers_too_large")
    assert took[0] < 3.0, took  # before: 10 s of the one worker's time
    assert max(health_seconds) < 0.5, health_seconds
    # Before: from 198 MB to 489 MB.
    assert resident_megabytes(server.process.pid) - before < 20
    assert_logged(server, "connection refused: The request's header section is larger")


def test_slow_loris_connections_are_answered_408_and_closed_after_the_headers_timeout(
    server: RunningServer,
) -> None:
    count = 100
    sockets = [connect(server) for _ in range(count)]
    for sock in sockets:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        sock.setblocking(False)
    started = time.monotonic()
    closed_after: dict[socket.socket, float] = {}
    answers = dict.fromkeys(sockets, b"")
    selector = selectors.DefaultSelector()
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ, data=sock)
    next_byte = started
    health_seconds: list[float] = []
    try:
        deadline = started + 4 * HEADERS_TIMEOUT_SECONDS
        while len(closed_after) < count and time.monotonic() < deadline:
            if time.monotonic() >= next_byte:  # a header byte, twice a second, on each
                for sock in sockets:
                    if sock not in closed_after:
                        with contextlib.suppress(OSError):
                            sock.send(b"X")
                next_byte += 0.5
                probe = time.monotonic()
                assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200
                health_seconds.append(time.monotonic() - probe)
            for key, _ in selector.select(timeout=0.05):
                sock = key.data
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                answers[sock] += chunk
                if not chunk:
                    closed_after[sock] = time.monotonic() - started
                    selector.unregister(sock)
    finally:
        selector.close()
        for sock in sockets:
            sock.close()

    assert len(closed_after) == count  # none stays open
    assert min(closed_after.values()) >= HEADERS_TIMEOUT_SECONDS - 0.2
    assert max(closed_after.values()) < HEADERS_TIMEOUT_SECONDS + 3  # 408, then 2 s of linger
    for answer in answers.values():
        assert_connection_problem(answer, 408, "request_timeout")
    assert max(health_seconds) < 0.5, health_seconds


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_timeout(
    server: RunningServer,
) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed, nothing said
        idle = time.monotonic() - started
    assert KEEP_ALIVE_TIMEOUT_SECONDS - 0.2 <= idle < KEEP_ALIVE_TIMEOUT_SECONDS + 1.5


def test_a_keep_alive_connection_is_closed_once_idle_for_the_keep_alive_timeout(
    server: RunningServer,
) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            answer += sock.recv(65536)
        started = time.monotonic()
        assert sock.recv(1024) == b""
        idle = time.monotonic() - started
    assert parse_answer(answer)[0] == 200
    assert KEEP_ALIVE_TIMEOUT_SECONDS - 0.2 <= idle < KEEP_ALIVE_TIMEOUT_SECONDS + 1.5


def test_pipelined_requests_and_a_head_followed_by_a_large_body_are_served(
    server: RunningServer,
) -> None:
    # Two requests in one write: both answered, in order.
    with connect(server) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
            b"GET /readyz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        answers = read_until_closed(sock)
    assert answers.count(b"HTTP/1.1 200 OK") == 2
    assert answers.index(b'{"status":"ok"}') < answers.index(b'"status":"ready"')

    # A body far larger than MAX_HEADER_BYTES, arriving with its head.
    users = [{"name": f"User {i}", "email": f"big{i}@example.com", "age": 30} for i in range(1000)]
    response = httpx.post(f"{server.base_url}/users/batch", json={"users": users}, timeout=30)
    assert response.status_code == 201, response.text
    assert len(response.json()["items"]) == 1000


def test_head_is_answered_with_the_get_headers_and_no_body(server: RunningServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        answer = read_until_closed(sock)
    status, headers, body = parse_answer(answer)
    assert (status, body) == (200, b"")
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(b'{"status":"ok"}'))


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One answer with a Content-Length, read whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    status, headers, body = parse_answer(data)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, headers, body


def test_each_answer_reaches_the_client_in_one_tcp_segment(server: RunningServer) -> None:
    # uvicorn writes the head, then the body; OneWriteTransport sends them
    # in one write, so the client reads one segment per answer, not two.
    created = httpx.post(
        f"{server.base_url}/users", json={"name": "One Write", "email": "one@example.com", "age": 1}
    )
    assert created.status_code == 201, created.text
    requests = [
        b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n",
        f"GET {created.headers['location']} HTTP/1.1\r\nHost: test\r\n\r\n".encode(),
        b"GET /users?limit=5 HTTP/1.1\r\nHost: test\r\n\r\n",
        b"GET /users/not-an-id HTTP/1.1\r\nHost: test\r\n\r\n",  # a 422 problem
    ]
    with connect(server) as sock:
        for request in requests:
            before = data_segments_received(sock)
            sock.sendall(request)
            status, headers, body = read_answer(sock)
            time.sleep(0.05)  # anything written after the answer has arrived by now
            assert status in (200, 422) and body, (request, status)
            assert data_segments_received(sock) - before == 1, (request, status, headers)
