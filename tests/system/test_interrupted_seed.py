"""A seed killed with SIGKILL mid-load leaves a database that is whole:
nothing of the load on SQLite (one transaction), whole batches elsewhere;
SQLite's integrity check passes, every index is there, and the database
migrates and serves as before."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func
from sqlalchemy import select as select_rows

from tests.databases import create_fresh_database, migrate
from tests.helpers import create_user
from tests.server import REPO_ROOT, running_server, service_env
from users_service.models import users
from users_service.settings import load_settings

USERS = 300_000
BATCH = 10_000
# The kill comes once the progress bar says this many users were handed to
# the database: mid-load, whatever the machine's speed (300,000 take 10 s
# or more even on a quiet machine).
KILL_AT = 30_000
# Only a hang ends the wait; a busy machine takes longer, never this long.
DEADLINE_SECONDS = 180.0
PROGRESS = re.compile(rb"(\d+)/" + str(USERS).encode())


def kill_mid_seed(url: str) -> None:
    command = [sys.executable, "-m", "users_service", "seed", str(USERS)]
    command += ["--batch-size", str(BATCH)]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=service_env(DATABASE_URL=url, ENVIRONMENT="test"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    output = b""
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stderr], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(process.stderr.fileno(), 65536)
            assert chunk, f"seed ended before it was killed: {output[-2000:]!r}"
            output += chunk
            done = [int(n) for n in PROGRESS.findall(output[-200:])]
            if done and max(done) >= KILL_AT:
                assert max(done) < USERS, "the seed finished before it was killed"
                process.send_signal(signal.SIGKILL)
                break
        else:
            raise AssertionError(f"no progress past {KILL_AT}: {output[-2000:]!r}")
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def test_a_seed_killed_mid_load_leaves_a_whole_database_that_migrates_and_serves(
    backend: str, tmp_path: Path
) -> None:
    url = create_fresh_database(backend, tmp_path, "_killed_seed")
    migrate(url)
    engine = create_engine(load_settings(database_url=url).sqlalchemy_url)
    with engine.connect() as connection:
        indexes_before = _index_names(connection) if backend == "sqlite" else set()

    kill_mid_seed(url)

    with engine.connect() as connection:
        count = connection.execute(select_rows(func.count()).select_from(users)).scalar_one()
        if backend == "sqlite":
            check = connection.exec_driver_sql("PRAGMA integrity_check").scalars().all()
            assert check == ["ok"]
            assert count == 0  # one transaction: nothing of it
            assert _index_names(connection) == indexes_before
        else:
            assert count % BATCH == 0 and count < USERS  # whole batches of 10,000
    engine.dispose()

    migrate(url)
    with (
        running_server(url, tmp_path / "server.log") as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        created = create_user(client)  # type: ignore[arg-type]
        page = client.get("/users", params={"limit": 5, "sort": "-created_at"})
        assert page.status_code == 200
        assert page.json()["items"][0]["id"] == created["id"]


def _index_names(connection: object) -> set[str]:
    rows = connection.exec_driver_sql("PRAGMA index_list(users)")  # type: ignore[attr-defined]
    return {row.name for row in rows}
