"""Deleting a day of expired Idempotency-Keys never holds up the event loop.

Before (issue 17, finding 3): the sweep deleted 300k expired keys with one
DELETE, on SQLite on the event loop: 8.5 s during which /healthz waited.
Now it deletes them 1000 at a time, each batch its own short transaction on
a worker thread. A real server starts on a database holding 300k expired
keys, with IDEMPOTENCY_SWEEP_SECONDS=2; while its sweep runs, a monitor
polls /healthz every 10 ms and a writer creates users with new keys. The
/healthz p99 must stay under 50 ms, and no /healthz may take a second:
generous for a busy 2-core machine (measured: p99 14 ms, the slowest 29-89
ms), and still short of the stall they guard against (8.5 s in the issue;
2.6 s for these 300k small keys on this machine before the change, which
a p99 over the whole watch alone did not catch: the stall is one request).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from tests.databases import create_fresh_database, migrate
from tests.helpers import p99
from tests.server import running_server
from users_service.db.bulk import insert_rows
from users_service.db.engine import WRITE_OPTION, create_db_engine
from users_service.idempotency import fingerprint
from users_service.models import idempotency_keys
from users_service.settings import load_settings

EXPIRED = 300_000
# The whole sweep may take this long on a busy machine (measured: a few seconds).
SWEEP_DEADLINE_SECONDS = 120.0


@pytest.fixture
def expired_keys(backend: str, tmp_path: Path) -> str:
    """A database holding EXPIRED keys created 25 hours ago, inserted in bulk."""
    if backend == "mariadb":
        pytest.skip("measured on SQLite and PostgreSQL (issue 17)")
    url = create_fresh_database(backend, tmp_path, "_sweep")
    migrate(url)
    engine = create_db_engine(load_settings(database_url=url, environment="test"))
    created_at = datetime.now(UTC) - timedelta(hours=25)
    request_hash = fingerprint(b'{"users": [{}]}')
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            for start in range(0, EXPIRED, 50_000):
                rows = [
                    {
                        "caller": "junk",
                        "endpoint": "POST /users/batch",
                        "key": f"junk-{number}",
                        "request_hash": request_hash,
                        "created_at": created_at,
                        "status": 422,
                        "headers": '{"content-type":"application/problem+json"}',
                        "body": b"x" * 300,
                    }
                    for number in range(start, start + 50_000)
                ]
                insert_rows(connection, rows, table=idempotency_keys)
    engine.dispose()
    return url


def expired_left(engine: Engine) -> int:
    cutoff = datetime.now(UTC) - timedelta(hours=24)
    with engine.connect() as connection:
        count: int = connection.execute(
            select(func.count())
            .select_from(idempotency_keys)
            .where(idempotency_keys.c.created_at < cutoff)
        ).scalar_one()
    return count


async def during_the_sweep(
    base_url: str, engine: Engine
) -> tuple[list[float], list[float], list[int], float]:
    """Poll /healthz and create users until no expired key is left: (health
    times, POST times, POST statuses, seconds the sweep took from here)."""
    health: list[float] = []
    writes: list[float] = []
    statuses: list[int] = []
    serial = itertools.count()
    swept = asyncio.Event()
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:

        async def monitor() -> None:
            while not swept.is_set():
                began = time.perf_counter()
                response = await http.get("/healthz")
                health.append(time.perf_counter() - began)
                assert response.status_code == 200
                await asyncio.sleep(0.01)

        async def writer() -> None:
            while not swept.is_set():
                number = next(serial)
                body = {"name": "Writer", "email": f"w{number}@sweep.example.com", "age": 40}
                began = time.perf_counter()
                response = await http.post(
                    "/users", json=body, headers={"Idempotency-Key": f"writer-{number}"}
                )
                writes.append(time.perf_counter() - began)
                statuses.append(response.status_code)
                await asyncio.sleep(0.05)

        async def until_swept() -> None:
            while await asyncio.to_thread(expired_left, engine):
                assert time.monotonic() - started < SWEEP_DEADLINE_SECONDS, "sweep too slow"
                await asyncio.sleep(0.5)
            swept.set()

        await asyncio.gather(monitor(), writer(), until_swept())
    return health, writes, statuses, time.monotonic() - started


def test_sweeping_300k_expired_keys_leaves_healthz_fast(expired_keys: str, tmp_path: Path) -> None:
    engine = create_db_engine(load_settings(database_url=expired_keys, environment="test"))
    env = {"IDEMPOTENCY_SWEEP_SECONDS": "2", "LOG_LEVEL": "WARNING"}
    try:
        with running_server(expired_keys, tmp_path / "server.log", env) as server:
            assert expired_left(engine) > 0, "the sweep was over before it was watched"
            health, writes, statuses, seconds = asyncio.run(
                during_the_sweep(server.base_url, engine)
            )
    finally:
        engine.dispose()

    print(
        f"swept {EXPIRED} in {seconds:.1f} s; healthz p99 {p99(health) * 1000:.1f} ms "
        f"(max {max(health) * 1000:.1f}) over {len(health)}; POST p99 "
        f"{p99(writes) * 1000:.1f} ms over {len(writes)}"
    )
    assert set(statuses) == {201}
    assert len(health) >= 50, "too few /healthz samples while the sweep ran"
    assert p99(health) < 0.050
    assert max(health) < 1.0, "the event loop stalled while the sweep ran"
