"""Safe writes on a real uvicorn process: Idempotency-Key across a crash and
restart, and a huge chunked upload refused without the server holding it."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.databases import create_fresh_database, migrate
from tests.server import RunningServer, running_server

UPLOAD_BYTES = 20 * 1024 * 1024
UPLOAD_CHUNK_BYTES = 64 * 1024
REFUSAL_DEADLINE_SECONDS = 5.0
RSS_GROWTH_LIMIT_BYTES = 30 * 1024 * 1024


def test_create_with_idempotency_key_is_replayed_after_kill_and_restart(
    backend: str, tmp_path: Path
) -> None:
    url = create_fresh_database(backend, tmp_path, "_server_idempotency")
    migrate(url)
    key = f"restart-{uuid.uuid4()}"
    body = b'{"name": "Grace Hopper", "email": "grace@example.com", "age": 85}'
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}

    with running_server(url, tmp_path / "first.log") as server:
        first = httpx.post(f"{server.base_url}/users", content=body, headers=headers, timeout=10)
        assert first.status_code == 201, first.text
        server.process.kill()
        server.process.wait(timeout=10)

    with running_server(url, tmp_path / "second.log") as server:
        retry = httpx.post(f"{server.base_url}/users", content=body, headers=headers, timeout=10)
        listed = httpx.get(
            f"{server.base_url}/users",
            params={"email": "grace@example.com", "include_total": "true"},
            timeout=10,
        )

    assert retry.status_code == 201, retry.text
    assert retry.headers["idempotency-replayed"] == "true"
    assert retry.content == first.content
    assert retry.headers["location"] == first.headers["location"]
    assert retry.headers["etag"] == first.headers["etag"]
    assert listed.status_code == 200, listed.text
    assert listed.json()["total"] == 1
    assert listed.json()["items"] == [first.json()]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class RssSampler:
    """The largest RSS of a process, sampled every few milliseconds while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, rss_bytes(self.pid))


@dataclass
class Upload:
    sent: int = 0
    response: bytearray = field(default_factory=bytearray)
    answered_after: float | None = None


def upload_chunked(server: RunningServer, total: int, deadline: float) -> Upload:
    """POST /users `total` bytes chunked on a raw socket, reading the answer as it comes.

    Stops sending when an answer has arrived, the socket errors, or all is sent.
    """
    address = urlsplit(server.base_url)
    assert address.hostname is not None and address.port is not None
    upload = Upload()
    finished = threading.Event()
    started = time.monotonic()
    sock = socket.create_connection((address.hostname, address.port), timeout=deadline)

    def read_answer() -> None:
        try:
            while data := sock.recv(65536):
                if upload.answered_after is None:
                    upload.answered_after = time.monotonic() - started
                upload.response.extend(data)
        except OSError:
            pass
        finally:
            finished.set()

    reader = threading.Thread(target=read_answer, daemon=True)
    reader.start()
    chunk = f"{UPLOAD_CHUNK_BYTES:x}\r\n".encode() + b" " * UPLOAD_CHUNK_BYTES + b"\r\n"
    try:
        sock.sendall(
            b"POST /users HTTP/1.1\r\n"
            + f"Host: {address.netloc}\r\n".encode()
            + b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"\r\n"
        )
        while upload.sent < total and upload.answered_after is None:
            sock.sendall(chunk)
            upload.sent += UPLOAD_CHUNK_BYTES
        if upload.sent >= total:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server closed the connection: stop sending
    finished.wait(max(0.0, deadline - (time.monotonic() - started)))
    sock.close()
    reader.join(timeout=5)
    return upload


def test_20_mb_chunked_upload_is_refused_with_413_without_buffering_it(
    backend: str, tmp_path: Path
) -> None:
    url = create_fresh_database(backend, tmp_path, "_server_limit")
    migrate(url)

    with running_server(url, tmp_path / "server.log") as server:
        warm_up = httpx.post(
            f"{server.base_url}/users",
            json={"name": "Warm Up", "email": "warm@example.com", "age": 1},
            timeout=10,
        )
        assert warm_up.status_code == 201, warm_up.text
        before = rss_bytes(server.process.pid)
        with RssSampler(server.process.pid) as rss:
            upload = upload_chunked(server, UPLOAD_BYTES, REFUSAL_DEADLINE_SECONDS)
        health = httpx.get(f"{server.base_url}/healthz", timeout=10)
        log = server.log()

    growth = rss.peak - before
    answered = "never" if upload.answered_after is None else f"{upload.answered_after:.3f} s"
    print(
        f"\n[{backend}] 20 MB chunked upload: answered after {answered}, "
        f"{upload.sent / 2**20:.1f} MiB sent, server RSS "
        f"{before / 2**20:.1f} -> peak {rss.peak / 2**20:.1f} MiB (+{growth / 2**20:.1f} MiB)"
    )
    assert upload.answered_after is not None, f"no answer within the deadline\n{log}"
    assert upload.answered_after < REFUSAL_DEADLINE_SECONDS
    head, _, body = bytes(upload.response).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 413 "), head.decode(errors="replace")
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert problem["code"] == "payload_too_large"
    assert growth < RSS_GROWTH_LIMIT_BYTES
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok"}
