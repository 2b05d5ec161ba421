"""Worst-case listings from one read key do not stall the service.

On 200k users, 20 clients loop the listings that read the most rows for the
least they return (a sort whose index must be walked past every user to
find none: `sort=name&created_after=2100-...`; a count; a name substring
that matches no one), while two writers create users and a monitor polls
/healthz. The event loop stays free (the scans run on worker threads, a few
at a time, each bounded in time) and writers never wait behind readers:
/healthz p99 stays under 50 ms and POST p99 under 250 ms, both timed from
a process of their own. A listing may be
refused (503 when it waited too long for a turn or ran too long, 429 past
the caller's requests in flight), never answered 500.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.databases import create_fresh_database, migrate
from tests.helpers import p99
from tests.server import running_server
from users_service.db.engine import create_db_engine
from users_service.seed import seed_users
from users_service.settings import load_settings

USERS = 200_000
SECONDS = 15.0
LISTERS = 20
WRITERS = 2
READ_KEY = "reader-key-0123456789abcdef"
WRITE_KEY = "writer-key-0123456789abcdef"
WORST_LISTINGS: list[dict[str, str | int]] = [
    {"sort": "name", "created_after": "2100-01-01T00:00:00Z", "limit": 500},
    {"sort": "-email", "max_age": 0, "include_total": "true"},
    {"name": "no one is called this", "include_total": "true"},
    {"sort": "age", "created_before": "1970-01-02T00:00:00Z"},
]


@pytest.fixture
def populated(backend: str, tmp_path: Path) -> str:
    if backend == "mariadb":
        pytest.skip("measured on SQLite and PostgreSQL (issue 17)")
    url = create_fresh_database(backend, tmp_path, "_hostile")
    migrate(url)
    engine = create_db_engine(
        load_settings(database_url=url, environment="test", db_statement_timeout_ms=0)
    )
    seed_users(engine, USERS, progress=False)  # which analyzes the table
    engine.dispose()
    return url


async def list_worst_cases(base_url: str) -> Counter[int]:
    """LISTERS clients looping the worst listings for SECONDS; their answers."""
    listings: Counter[int] = Counter()
    deadline = time.monotonic() + SECONDS
    limits = httpx.Limits(max_connections=LISTERS)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:

        async def lister(number: int) -> None:
            headers = {"Authorization": f"Bearer {READ_KEY}"}
            for params in itertools.cycle(WORST_LISTINGS[number % 4 :] + WORST_LISTINGS):
                if time.monotonic() > deadline:
                    return
                response = await http.get("/users", params=params, headers=headers)
                listings[response.status_code] += 1

        await asyncio.gather(*(lister(number) for number in range(LISTERS)))
    return listings


def probe(base_url: str, attempt: int) -> tuple[list[float], list[float]]:
    """Seconds per /healthz and per POST, timed from a process of its own:
    timed beside the 20 listers, the figures were mostly the test's own event
    loop (p99 650-820 ms in one process against 25-67 ms apart, same run)."""
    return asyncio.run(_probe(base_url, attempt))


async def _probe(base_url: str, attempt: int) -> tuple[list[float], list[float]]:
    health: list[float] = []
    writes: list[float] = []
    deadline = time.monotonic() + SECONDS
    serial = itertools.count()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:

        async def writer(number: int) -> None:
            headers = {"Authorization": f"Bearer {WRITE_KEY}"}
            while time.monotonic() < deadline:
                email = f"w{attempt}-{number}-{next(serial)}@load.example.com"
                body = {"name": "Writer", "email": email, "age": 40}
                started = time.perf_counter()
                response = await http.post("/users", json=body, headers=headers)
                writes.append(time.perf_counter() - started)
                assert response.status_code == 201, response.text

        async def monitor() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await http.get("/healthz")
                health.append(time.perf_counter() - started)
                assert response.status_code == 200
                await asyncio.sleep(0.01)

        await asyncio.gather(*(writer(number) for number in range(WRITERS)), monitor())
    return health, writes


def test_worst_case_listings_leave_health_and_writes_fast(populated: str, tmp_path: Path) -> None:
    env = {
        "API_KEYS": f"writer:{WRITE_KEY}",
        "API_READ_KEYS": f"reader:{READ_KEY}",
        "LOG_LEVEL": "WARNING",
    }
    spawn = multiprocessing.get_context("spawn")
    with (
        running_server(populated, tmp_path / "server.log", env) as server,
        ProcessPoolExecutor(1, mp_context=spawn) as prober,
    ):
        # The better of two windows: one window on this shared 2-core machine
        # can catch the scheduler handing both cores to the database for a
        # while. A stall of the service (the fault pinned here: /healthz
        # waiting seconds behind a scan) fails both.
        for attempt in range(2):
            probed = prober.submit(probe, server.base_url, attempt)
            listings = asyncio.run(list_worst_cases(server.base_url))
            health, writes = probed.result(timeout=SECONDS * 4)
            print(
                f"healthz p99 {p99(health) * 1000:.1f} ms over {len(health)}; "
                f"POST p99 {p99(writes) * 1000:.1f} ms over {len(writes)}; "
                f"listings {dict(listings)}"
            )
            assert set(listings) <= {200, 429, 503}, listings
            assert listings[200] > 0
            if p99(health) < 0.050 and p99(writes) < 0.250:
                break
    assert p99(health) < 0.050
    assert p99(writes) < 0.250
