"""Name search benchmark: p50 / p99 of `GET /users?name=...` on a seeded table.

Runs the service as a real process on each database named in
BENCH_NAME_SEARCH_URLS (comma-separated, already seeded: `python -m
users_service seed 1000000`), adds a few users with names no seeded user
has (the "few" rows; again on each run is harmless), and measures each
query with wrk and one connection: names that match many users, a few, or
none, from one character to 200.

    BENCH_NAME_SEARCH_URLS=sqlite:///./users.db python -m benchmarks.name_search
    BENCH_NAME_SEARCH_URLS=postgresql://...,mariadb://... python -m benchmarks.name_search
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import quote

import httpx
from sqlalchemy import func, select

from benchmarks.wrk import require_wrk, run_wrk
from tests.server import running_server
from users_service.db.bulk import analyze
from users_service.db.engine import create_db_engine
from users_service.models import users
from users_service.settings import load_settings

FEW = 5
# 200 characters, in no seeded name: the names of the FEW users, and a query.
LONG_FEW = ("Quentin Quokka " * 14)[:200]
LONG_NONE = ("Zx Wv " * 34)[:200]
QUERIES = (
    # (matches, characters, query)
    ("many", "1", "a"),
    ("many", "2", "an"),
    ("many", "3", "son"),
    ("many (0.3%)", "12", "Ada Lovelace"),
    ("few", "1", "q"),
    ("few", "2", "qu"),
    ("few", "3", "quo"),
    ("few", "6", "Quokka"),
    ("few", "200", LONG_FEW),
    ("none", "1", "x"),
    ("none", "2", "zx"),
    ("none", "3", "zqx"),
    ("none", "4", "zqxj"),
    ("none", "200", LONG_NONE),
)


def prepare(url: str) -> int:
    """The table's size, its statistics refreshed."""
    engine = create_db_engine(load_settings(database_url=url, db_statement_timeout_ms=0))
    with engine.connect() as connection:
        size = int(connection.execute(select(func.count()).select_from(users)).scalar_one())
        connection.rollback()
        analyze(connection)
    engine.dispose()
    return size


def measure(base_url: str, seconds: float) -> list[str]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        tag = secrets.token_hex(3)
        for i in range(FEW):
            body = {"name": LONG_FEW, "email": f"few-{tag}-{i}@example.com", "age": 40}
            client.post("/users", json=body).raise_for_status()
    lines = []
    for matches, length, query in QUERIES:
        path = f"/users?limit=50&name={quote(query)}"
        run_wrk(base_url + path, connections=1, seconds=1)  # warm caches
        result = run_wrk(base_url + path, connections=1, seconds=seconds)
        if result.non_2xx or result.socket_errors:
            failed = f"{result.non_2xx} non-2xx, {result.socket_errors} errors"
            raise RuntimeError(f"{query!r}: {failed}")
        shown = query if len(query) <= 16 else f"{query[:13]}..."
        lines.append(
            f"| {matches} | {length} | `{shown}` | {result.p50_ms:.2f} / {result.p99_ms:.2f} |"
        )
    return lines


def main() -> int:
    require_wrk()
    seconds = float(os.environ.get("BENCH_SECONDS", "3"))
    urls = [u.strip() for u in os.environ["BENCH_NAME_SEARCH_URLS"].split(",") if u.strip()]
    with tempfile.TemporaryDirectory(prefix="users-bench-") as work:
        for url in urls:
            size = prepare(url)
            env = {"LOG_LEVEL": "WARNING", "DB_STATEMENT_TIMEOUT_MS": "0"}
            backend = url.split(":", 1)[0]
            with running_server(url, Path(work) / f"server-{backend}.log", env) as server:
                lines = measure(server.base_url, seconds)
            print(f"### {backend}, {size:,} users: wrk, 1 connection, {seconds:g} s per query\n")
            print("| matches | characters | name | p50 / p99 ms |")
            print("| --- | ---: | --- | ---: |")
            print("\n".join(lines) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
