"""Scale benchmark: does listing stay flat from 10k to 1M users?

For each database, seeds 10k, then 100k, then 1M users (adding to the same
table; each load's time and bytes written, this process's and the database
server's, beside the table's size), serves the service as a real process
right after each load (no ANALYZE of its own: the seed refreshes the
statistics), and measures each listing request with wrk and one connection
(one client, back to back): p50 and p99, and the growth of p50 from the
smallest to the largest table, the reference measured in the same run.

    make bench-scale                          # SQLite and PostgreSQL
    BENCH_DATABASES=sqlite,postgresql,mariadb make bench-scale
    BENCH_SIZES=10000,100000 BENCH_SECONDS=2 make bench-scale

PostgreSQL and MariaDB use the databases named by BENCH_POSTGRESQL_URL and
BENCH_MARIADB_URL, which are dropped and created anew.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from benchmarks.databases import (
    backends,
    database_size,
    fresh_database,
    process_bytes_written,
    server_bytes_written,
)
from benchmarks.wrk import WrkResult, require_wrk, run_wrk
from tests.server import running_server
from users_service.seed import seed_users

DEEP_ROWS = 10_000
# Index-served requests: these must stay flat as the table grows.
INDEXED = (
    ("first page", "/users?limit=50"),
    ("page 10,000 deep", None),
    ("sort=-created_at", "/users?limit=50&sort=-created_at"),
    ("sort=name", "/users?limit=50&sort=name"),
    ("sort=-name", "/users?limit=50&sort=-name"),
    ("sort=email", "/users?limit=50&sort=email"),
    ("sort=-email", "/users?limit=50&sort=-email"),
    ("sort=age", "/users?limit=50&sort=age"),
    ("sort=-age", "/users?limit=50&sort=-age"),
    ("email filter", None),
    ("age 30-40 by age", "/users?limit=50&sort=age&min_age=30&max_age=40"),
)
# Requests that read more than a page by nature.
UNINDEXED = (
    ("age 60-90, default order", "/users?limit=50&min_age=60&max_age=90"),
    ("name substring", "/users?limit=50&name=ovela"),
    ("name substring, no match", "/users?limit=50&name=zqxj"),
    # Name search (issue 13): many (17%), a few (0.3%), none; 1 and 200 characters.
    ("name, many, 3 characters", "/users?limit=50&name=son"),
    ("name, 0.3%, 12 characters", "/users?limit=50&name=Ada%20Lovelace"),
    ("name, none, 1 character", "/users?limit=50&name=x"),
    ("name, none, 200 characters", "/users?limit=50&name=" + "Zx%20Wv%20" * 33 + "Zx"),
    # In another order than the default (the seed's 324 names cluster in
    # name order: no `son` among the first 18,000 users by name, and `Tim`
    # comes last).
    ("name, many, 3 characters, sort=name", "/users?limit=50&name=son&sort=name"),
    ("name, 5.6%, last by name, sort=name", "/users?limit=50&name=Tim&sort=name"),
    ("name, 0.3%, 12 characters, sort=email", "/users?limit=50&name=Ada%20Lovelace&sort=email"),
    ("name, none, 1 character, sort=-age", "/users?limit=50&name=x&sort=-age"),
    ("include_total", "/users?limit=50&include_total=true"),
)


Results = dict[str, dict[int, WrkResult]]


def deep_cursor_path(base_url: str, size: int) -> str:
    """A page DEEP_ROWS rows in (or as deep as a smaller table allows)."""
    remaining, cursor = min(DEEP_ROWS, size - 50), None
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while remaining > 0:
            params = {"limit": str(min(500, remaining)), **({"cursor": cursor} if cursor else {})}
            cursor = client.get("/users", params=params).raise_for_status().json()["next_cursor"]
            remaining -= int(params["limit"])
    return f"/users?limit=50&cursor={quote(str(cursor))}"


def some_email(base_url: str) -> str:
    page = httpx.get(f"{base_url}/users?limit=1&sort=-created_at", timeout=30).json()
    return f"/users?limit=50&email={quote(page['items'][0]['email'])}"


def measure(base_url: str, path: str, seconds: float) -> WrkResult:
    run_wrk(base_url + path, connections=1, seconds=1)  # warm caches
    result = run_wrk(base_url + path, connections=1, seconds=seconds)
    if result.non_2xx or result.socket_errors:
        raise RuntimeError(f"{path}: {result.non_2xx} non-2xx, {result.socket_errors} errors")
    if not result.requests_per_second:
        # Slower than the run: wrk saw no answer. One request, timed.
        started = time.perf_counter()
        httpx.get(base_url + path, timeout=120).raise_for_status()
        ms = (time.perf_counter() - started) * 1000
        return WrkResult(1000 / ms, ms, ms, 0, 0)
    return result


@dataclass
class Load:
    users: int  # in the table after the load
    added: int
    seconds: float
    written: int  # bytes: this process's and the database server's
    table: int  # bytes the users table takes (SQLite: the file)


def bench_database(
    backend: str, sizes: list[int], seconds: float, work: Path
) -> tuple[Results, list[Load]]:
    url, engine = fresh_database(backend, work)
    results: Results = {}
    loads: list[Load] = []
    seeded = 0
    for size in sizes:
        # Right after the load: no ANALYZE here, seed refreshes the statistics itself.
        written = process_bytes_written() + server_bytes_written(engine)
        started = time.perf_counter()
        seed_users(engine, size - seeded, progress=sys.stderr.isatty())
        elapsed = time.perf_counter() - started
        engine.dispose()  # PostgreSQL counts a session's WAL when it ends
        written = process_bytes_written() + server_bytes_written(engine) - written
        loads.append(Load(size, size - seeded, elapsed, written, database_size(engine)))
        seeded = size
        print(f"{backend}: {size:,} users seeded ({elapsed:.1f} s)", file=sys.stderr)
        # No statement limit: the benchmark measures the queries, however slow.
        env = {"LOG_LEVEL": "WARNING", "DB_STATEMENT_TIMEOUT_MS": "0"}
        with running_server(url, work / f"server-{backend}-{size}.log", env) as server:
            paths = dict(INDEXED + UNINDEXED)
            paths["page 10,000 deep"] = deep_cursor_path(server.base_url, size)
            paths["email filter"] = some_email(server.base_url)
            for name, path in paths.items():
                assert path is not None
                results.setdefault(name, {})[size] = measure(server.base_url, path, seconds)
    engine.dispose()
    return results, loads


def report_loads(backend: str, loads: list[Load]) -> str:
    lines = [
        f"### {backend}: seeding",
        "",
        "| users after | added | seconds | users/s | written MB | users table MB"
        " | written / table growth |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    table_before = 0
    for load in loads:
        growth = max(load.table - table_before, 1)
        rate = load.added / load.seconds
        lines.append(
            f"| {load.users:,} | {load.added:,} | {load.seconds:.1f} | {rate:,.0f}"
            f" | {load.written / 1e6:,.0f} | {load.table / 1e6:,.0f}"
            f" | {load.written / growth:.2f}x |"
        )
        table_before = load.table
    return "\n".join(lines)


def report(backend: str, sizes: list[int], results: Results) -> str:
    smallest, largest = sizes[0], sizes[-1]
    head = " | ".join(f"{size:,} p50 / p99 ms" for size in sizes)
    lines = [
        f"### {backend}",
        "",
        f"| request | {head} | p50 growth {smallest:,} -> {largest:,} |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: |",
    ]
    indexed = {name for name, _ in INDEXED}
    for name, by_size in results.items():
        cells = " | ".join(f"{by_size[s].p50_ms:.2f} / {by_size[s].p99_ms:.2f}" for s in sizes)
        growth = by_size[largest].p50_ms / max(by_size[smallest].p50_ms, 0.001)
        mark = "" if name not in indexed or growth <= 1.5 else " (over 1.5x)"
        lines.append(f"| {name} | {cells} | {growth:.2f}x{mark} |")
    return "\n".join(lines)


def main() -> int:
    require_wrk()
    sizes = [int(n) for n in os.environ.get("BENCH_SIZES", "10000,100000,1000000").split(",")]
    seconds = float(os.environ.get("BENCH_SECONDS", "3"))
    print(
        f"# Scale benchmark: wrk, 1 connection, {seconds:g} s per request; {os.cpu_count()} cores\n"
    )
    with tempfile.TemporaryDirectory(prefix="users-bench-") as work:
        for backend in backends():
            results, loads = bench_database(backend, sizes, seconds, Path(work))
            print(report_loads(backend, loads) + "\n", flush=True)
            print(report(backend, sizes, results) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
