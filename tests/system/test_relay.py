"""`users-service relay` against a real NATS JetStream: a broker outage, a SIGKILL.

Each test starts its own nats-server (JetStream, on a free port, its store in
a temporary directory: the machine's shared broker is never touched), its
own relay process and a fresh database. At the end the stream must hold
every change of the table exactly once, in seq order.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import make_url

from tests.databases import create_fresh_database, migrate
from tests.server import REPO_ROOT, free_port, service_env
from users_service.main import create_app
from users_service.models import change_positions, user_changes
from users_service.settings import load_settings

RELAY_COMMAND = [sys.executable, "-m", "users_service", "relay"]
STREAM = "TEST_RELAY"
PREFIX = "test-relay.changes"
# Long enough for a slow, busy machine; a relay that stalls never gets there.
DEADLINE_SECONDS = 60.0


class Broker:
    """A nats-server with JetStream of the test's own, stopped and started at will."""

    def __init__(self, store: Path, log: Path) -> None:
        binary = shutil.which("nats-server")
        assert binary, "nats-server is not installed (apt-get install nats-server)"
        self.command = [binary, "-js", "-a", "127.0.0.1", "-p", str(free_port()), "-sd", str(store)]
        self.url = f"nats://127.0.0.1:{self.command[5]}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            try:
                asyncio.run(_stream_messages(self.url))
                return
            except Exception:
                time.sleep(0.1)
        raise AssertionError("nats-server did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


async def _stream_messages(url: str) -> list[tuple[str, dict[str, Any]]]:
    """(Nats-Msg-Id, body) of every message of the stream, in stream order
    ([] while the relay has not made the stream yet)."""
    import nats
    from nats.js.errors import NotFoundError

    connection = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        jetstream = connection.jetstream(timeout=5)
        try:
            info = await jetstream.stream_info(STREAM)
        except NotFoundError:
            return []
        messages = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await jetstream.get_msg(STREAM, seq)
            headers = message.headers or {}
            messages.append((headers.get("Nats-Msg-Id", ""), orjson.loads(message.data or b"")))
        return messages
    finally:
        await connection.close()


@contextmanager
def setup(backend: str, tmp_path: Path) -> Iterator[tuple[Broker, TestClient, Callable[[], Any]]]:
    url = create_fresh_database(backend, tmp_path, suffix="_relay")
    migrate(url)
    broker = Broker(tmp_path / "jetstream", tmp_path / "nats.log")
    broker.start()
    app = create_app(load_settings(database_url=url, environment="test", log_level="WARNING"))
    env = service_env(
        DATABASE_URL=url,
        ENVIRONMENT="test",
        LOG_LEVEL="INFO",
        RELAY_NATS_URL=broker.url,
        RELAY_STREAM=STREAM,
        RELAY_SUBJECT_PREFIX=PREFIX,
    )
    relays: list[subprocess.Popen[bytes]] = []
    relay_log = tmp_path / "relay.log"

    def start_relay() -> subprocess.Popen[bytes]:
        with relay_log.open("ab") as log:
            process = subprocess.Popen(
                RELAY_COMMAND, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        relays.append(process)
        return process

    try:
        with TestClient(app) as client:
            client.app.state.relay_log = relay_log  # type: ignore[attr-defined]
            yield broker, client, start_relay
    finally:
        for process in relays:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        broker.stop()
        app.state.database.engine.dispose()


def table_seqs(client: TestClient) -> list[int]:
    with client.app.state.database.engine.connect() as connection:  # type: ignore[attr-defined]
        rows = connection.execute(select(user_changes.c.seq).order_by(user_changes.c.seq))
        return list(rows.scalars())


async def _stream_count(url: str) -> int:
    import nats
    from nats.js.errors import NotFoundError

    connection = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        try:
            info = await connection.jetstream(timeout=5).stream_info(STREAM)
        except NotFoundError:
            return 0
        return int(info.state.messages)
    finally:
        await connection.close()


def stream_count(broker: Broker, wanted: int) -> int:
    """How many messages the stream holds, once it holds `wanted` (or the deadline passed)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        count = asyncio.run(_stream_count(broker.url))
        if count >= wanted or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def wait_for_stream(broker: Broker, client: TestClient) -> list[Any]:
    """The stream's messages once it holds as many as the table has changes
    (and then a moment more: a repeat would show)."""
    stream_count(broker, len(table_seqs(client)))
    time.sleep(0.5)
    return asyncio.run(_stream_messages(broker.url))


def assert_every_change_once_in_order(messages: list[Any], client: TestClient) -> None:
    seqs = [body["seq"] for _, body in messages]
    assert seqs == table_seqs(client), client.app.state.relay_log.read_text()  # type: ignore[attr-defined]
    assert [msg_id for msg_id, _ in messages] == [f"users-change-{seq}" for seq in seqs]
    for _, body in messages:
        assert body["action"] in ("created", "updated", "deleted")


def create_users(client: TestClient, tag: str, count: int) -> list[dict[str, Any]]:
    users = [
        {"name": f"{tag} {n}", "email": f"{tag}{n}@example.com", "age": 1} for n in range(count)
    ]
    response = client.post("/users/batch", json={"users": users})
    assert response.status_code == 201, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_changes_written_while_the_broker_is_down_all_arrive_once_in_order(
    backend: str, tmp_path: Path
) -> None:
    with setup(backend, tmp_path) as (broker, client, start_relay):
        start_relay()
        before = create_users(client, "before", 20)
        assert len(wait_for_stream(broker, client)) == 20

        broker.stop()
        for user in before:  # writes go on while the broker is away
            assert client.patch(f"/users/{user['id']}", json={"age": 2}).status_code == 200
        time.sleep(1.5)  # the relay fails and retries meanwhile
        broker.start()
        for user in before[:5]:
            assert client.delete(f"/users/{user['id']}").status_code == 204

        messages = wait_for_stream(broker, client)
        assert_every_change_once_in_order(messages, client)
        assert len(messages) == 45


@contextmanager
def position_locked(url: str) -> Iterator[Callable[[], int]]:
    """The relay's position row locked by another transaction, so that the
    relay cannot record a position; yields a reader of the stored position."""
    if url.startswith("sqlite"):
        raw = sqlite3.connect(make_url(url).database or "", isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")  # SQLite: the whole database's write lock
        try:
            yield lambda: int(
                raw.execute(
                    "SELECT seq FROM change_positions WHERE name = ?", (f"relay:{STREAM}",)
                ).fetchone()[0]
            )
        finally:
            raw.rollback()
            raw.close()
        return
    engine = create_engine(load_settings(database_url=url).sqlalchemy_url)
    try:
        with engine.connect() as connection:
            row = select(change_positions.c.seq).where(change_positions.c.name == f"relay:{STREAM}")
            connection.execute(row.with_for_update())
            try:
                yield lambda: int(connection.execute(row).scalar_one())
            finally:
                connection.rollback()
    finally:
        engine.dispose()


def test_a_relay_killed_before_recording_what_was_published_repeats_nothing_on_restart(
    backend: str, tmp_path: Path
) -> None:
    with setup(backend, tmp_path) as (broker, client, start_relay):
        create_users(client, "first", 1000)
        url = str(client.app.state.settings.database_url)  # type: ignore[attr-defined]
        with client.app.state.database.engine.begin() as connection:  # type: ignore[attr-defined]
            connection.execute(insert(change_positions).values(name=f"relay:{STREAM}", seq=0))
        with position_locked(url) as stored_position:
            relay = start_relay()
            # The first page (500) is published and acknowledged; recording
            # the position waits on the lock. Killed there, the relay has
            # published what its position does not say.
            assert stream_count(broker, 500) == 500
            relay.send_signal(signal.SIGKILL)
            relay.wait(timeout=10)
            assert stored_position() == 0

        start_relay()
        create_users(client, "second", 10)

        messages = wait_for_stream(broker, client)
        assert_every_change_once_in_order(messages, client)
        assert len(messages) == 1010
