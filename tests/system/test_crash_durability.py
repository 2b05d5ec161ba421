"""Crash durability: a server killed with SIGKILL under a load of creates
loses no user it acknowledged.

Writers on their own threads create users with unique emails, each on its
own keep-alive connection, until the process dies under them; then the
service is started again on the same database.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, select

from tests.databases import create_fresh_database, migrate
from tests.server import RunningServer, running_server
from users_service.db.rendering import to_record
from users_service.models import users
from users_service.settings import load_settings

WRITERS = 12
# The kill comes once this many creates were acknowledged: mid-load on any machine.
KILL_AFTER_ACKNOWLEDGED = 150
LOAD_DEADLINE_SECONDS = 30.0


@dataclass
class Load:
    stop: threading.Event = field(default_factory=threading.Event)
    acknowledged: list[httpx.Response] = field(default_factory=list)
    unanswered: list[dict[str, Any]] = field(default_factory=list)
    other: list[httpx.Response] = field(default_factory=list)


def create_until_stopped(server: RunningServer, writer: int, load: Load) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        serial = 0
        while not load.stop.is_set():
            serial += 1
            body: dict[str, Any] = {
                "name": f"Writer {writer} #{serial}",
                "email": f"w{writer}-{serial}@x.io",
                "age": serial % 150,
            }
            try:
                response = client.post("/users", json=body)
            except httpx.TransportError:  # the server died with it in flight
                load.unanswered.append(body)
                return
            (load.acknowledged if response.status_code == 201 else load.other).append(response)


def stored_users(url: str) -> list[dict[str, Any]]:
    engine = create_engine(load_settings(database_url=url).sqlalchemy_url)
    try:
        with engine.connect() as connection:
            return [to_record(row._mapping) for row in connection.execute(select(users))]
    finally:
        engine.dispose()


def test_every_create_acknowledged_before_sigkill_is_there_intact_after_restart(
    backend: str, tmp_path: Path
) -> None:
    url = create_fresh_database(backend, tmp_path, "_crash")
    migrate(url)
    load = Load()

    with running_server(url, tmp_path / "killed.log") as server:
        writers = [
            threading.Thread(target=create_until_stopped, args=(server, writer, load))
            for writer in range(WRITERS)
        ]
        for thread in writers:
            thread.start()
        deadline = time.monotonic() + LOAD_DEADLINE_SECONDS
        while len(load.acknowledged) < KILL_AFTER_ACKNOWLEDGED and time.monotonic() < deadline:
            time.sleep(0.005)
        server.process.kill()
        server.process.wait(timeout=10)
        load.stop.set()
        for thread in writers:
            thread.join(timeout=15)

    acknowledged = list(load.acknowledged)
    with (
        running_server(url, tmp_path / "restarted.log") as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        fetched = [client.get(response.headers["location"]) for response in acknowledged]
    stored = stored_users(url)

    print(
        f"\n[{backend}] killed after {len(acknowledged)} acknowledged creates, "
        f"{len(load.unanswered)} in flight; {len(stored)} users stored"
    )
    assert load.other == [], [r.text for r in load.other]
    assert len(acknowledged) >= KILL_AFTER_ACKNOWLEDGED
    assert load.unanswered, "no create was in flight when the server was killed"
    for created, read_back in zip(acknowledged, fetched, strict=True):
        assert read_back.status_code == 200, (created.json(), read_back.text)
        assert read_back.json() == created.json()
        assert read_back.headers["etag"] == created.headers["etag"]
    # Nothing else is there but whole users among those in flight at the kill.
    sent_in_flight = {body["email"]: body for body in load.unanswered}
    acknowledged_ids = {response.json()["id"] for response in acknowledged}
    for user in stored:
        if user["id"] in acknowledged_ids:
            continue
        sent = sent_in_flight.get(user["email"])
        assert sent is not None, user
        assert (user["name"], user["age"], user["version"]) == (sent["name"], sent["age"], 1)
