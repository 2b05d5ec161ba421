"""The service's own cost per request, measured in process: no server, no wrk.

Drives the ASGI app directly, one request at a time, for each endpoint of
`make bench` and prints the median and p90 of the wall time per request in
microseconds, over several rounds. Without wrk and a server sharing the two
cores, it is far steadier than requests/s, so it is the figure to compare
when a change touches the request path (run it on both commits, one after
the other):

    python -m benchmarks.inprocess            # SQLite and PostgreSQL
    BENCH_DATABASES=sqlite INPROCESS_REQUESTS=5000 python -m benchmarks.inprocess
    INPROCESS_ENDPOINTS=POST python -m benchmarks.inprocess   # endpoints whose name has POST
    BENCH_RATE_LIMITS=bench:100000 python -m benchmarks.inprocess   # the limit's cost
    BENCH_RATE_LIMITS=bench:100000 BENCH_RATE_LIMIT_STORAGE_URL=redis://127.0.0.1:6379/0 ...

It measures what the app does per request (routing, middleware, reading
parameters, the database's round trips, rendering), not the HTTP server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from benchmarks.databases import backends, fresh_database
from users_service.main import create_app
from users_service.models import User
from users_service.seed import seed_users
from users_service.settings import load_settings

users = User.__table__  # type: ignore[attr-defined]  # as on every commit compared
SEEDED = int(os.environ.get("BENCH_USERS", "20000"))
REQUESTS = int(os.environ.get("INPROCESS_REQUESTS", "3000"))
ROUNDS = int(os.environ.get("INPROCESS_ROUNDS", "5"))
# Only the endpoints whose name (as printed) holds one of these
# (comma-separated), e.g. "GET /users/{id}" or "POST".
ONLY = [name.strip() for name in os.environ.get("INPROCESS_ENDPOINTS", "").split(",")]
ONLY = [name for name in ONLY if name]
API_KEY = secrets.token_urlsafe(24)
# The caller is `bench`: a limit high enough never to refuse measures what
# checking it costs (docs/performance.md, "Rate limits").
RATE_LIMITS = os.environ.get("BENCH_RATE_LIMITS", "")
RATE_LIMIT_STORAGE_URL = os.environ.get("BENCH_RATE_LIMIT_STORAGE_URL", "")


async def call(
    app: Any, method: str, path: str, body: bytes = b"", extra: tuple[tuple[bytes, bytes], ...] = ()
) -> int:
    """One request through the ASGI app; returns the status."""
    path, _, query = path.partition("?")
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {API_KEY}".encode()), *extra]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


Request = Callable[[int], Awaitable[int]]


async def measure(request: Request, count: int) -> list[float]:
    times = []
    for number in range(count):
        started = time.perf_counter()
        status = await request(number)
        times.append((time.perf_counter() - started) * 1e6)
        assert status < 300, status
    return times


async def run(url: str, ids: list[str]) -> dict[str, list[float]]:
    settings = load_settings(
        database_url=url,
        environment="production",
        api_keys=f"bench:{API_KEY}",
        cursor_secret=secrets.token_hex(16),
        log_level="WARNING",
        rate_limits=RATE_LIMITS,
        rate_limit_storage_url=RATE_LIMIT_STORAGE_URL,
        rate_limit_key_prefix=f"users-service-bench-{secrets.token_hex(4)}",
    )
    app = create_app(settings)
    tag = secrets.token_hex(4)
    serial = iter(range(10**9))

    def keyed_create(number: int) -> Awaitable[int]:
        body = b'{"name": "Bench User", "email": "k-%s-%d@example.com", "age": 30}'
        key = b"bench-%s-%d" % (tag.encode(), number)
        return call(
            app, "POST", "/users", body % (tag.encode(), number), ((b"idempotency-key", key),)
        )

    endpoints: dict[str, Request] = {
        "GET /users/{id}": lambda n: call(app, "GET", f"/users/{ids[n % len(ids)]}"),
        "GET /users?limit=50": lambda n: call(app, "GET", "/users?limit=50"),
        "POST /users": lambda n: call(
            app,
            "POST",
            "/users",
            b'{"name": "Bench User", "email": "b-%s-%d@example.com", "age": 30}'
            % (tag.encode(), next(serial)),
        ),
        "POST /users with Idempotency-Key": lambda n: keyed_create(next(serial)),
        "PATCH /users/{id}": lambda n: call(
            app, "PATCH", f"/users/{ids[n % len(ids)]}", b'{"age": %d}' % (n % 150)
        ),
    }
    if ONLY:
        endpoints = {
            name: request
            for name, request in endpoints.items()
            if any(part in name for part in ONLY)
        }
    results: dict[str, list[float]] = {name: [] for name in endpoints}
    async with app.router.lifespan_context(app):
        for round_number in range(ROUNDS + 1):
            for name, request in endpoints.items():
                times = await measure(request, REQUESTS)
                if round_number:  # the first round warms up
                    results[name].append(statistics.median(times))
                    results[name].append(sorted(times)[int(len(times) * 0.9)])
    return results


def seeded_database(backend: str, work_dir: Path) -> tuple[str, list[str]]:
    """A fresh database on `backend` holding SEEDED users: its URL, and the
    ids of 5,000 of them to read."""
    url, engine = fresh_database(backend, work_dir)
    seed_users(engine, SEEDED, progress=False)
    with engine.connect() as connection:
        ids = [str(i) for i in connection.execute(select(users.c.id).limit(5000)).scalars()]
    engine.dispose()
    return url, ids


def main() -> int:
    print(f"# In process: {REQUESTS} requests x {ROUNDS} rounds per endpoint; {SEEDED:,} users")
    limits = f"RATE_LIMITS={RATE_LIMITS!r} storage={RATE_LIMIT_STORAGE_URL or 'memory'}"
    print(f"# {limits if RATE_LIMITS else 'no rate limits'}\n")
    print("| database: endpoint | median µs | p90 µs |\n| --- | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="users-inprocess-") as work_dir:
        for backend in backends():
            url, ids = seeded_database(backend, Path(work_dir))
            results = asyncio.run(run(url, ids))
            for name, values in results.items():
                medians, p90s = values[0::2], values[1::2]
                print(
                    f"| {backend}: {name} | {statistics.median(medians):,.0f} | "
                    f"{statistics.median(p90s):,.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
