"""Throughput benchmark: the service against the framework's own ceiling.

Serves, one after the other with the same uvicorn settings, the bare app of
benchmarks/ceiling.py and the service (SQLite, then PostgreSQL, each seeded
with 100k users), and drives each with wrk for a fixed time at 64
connections. Reports requests/s, p50, p99, non-2xx answers and the ratio to
the ceiling measured in the same run, the peak memory of each worker, and
the same with 2 workers (the scaling factor).

The ceiling is measured before each database's endpoints and after the
last: each endpoint's share is of the mean of the two ceilings around its
database's block. The machine's speed drifts within minutes, and one
ceiling at the start made the shares swing: two runs four minutes apart
measured a ceiling of 8,913 then 7,347 requests/s, and SQLite POST at 20%
then 27% of it (docs/performance.md, "The throughput targets, ninth
sitting").

BENCH_ROUNDS=n runs the whole measurement n times over the same seeded
databases (each round's POSTs add to them) and ends with each endpoint's
median share and its range: two runs of the same code minutes apart have
differed by a third on one endpoint (SQLite POST at 19% then 27%), so one
run cannot tell whether a target is held.

    make bench
    BENCH_ROUNDS=3 BENCH_WORKERS=1 make bench
    BENCH_DATABASES=sqlite BENCH_SECONDS=5 BENCH_WORKERS=1 make bench
    BENCH_RATE_LIMITS=bench:1000000 make bench    # with a rate limit checked
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import func, select

from benchmarks.databases import backends, fresh_database
from benchmarks.wrk import WrkResult, require_wrk, run_wrk
from tests.server import REPO_ROOT, free_port, service_env
from users_service.logs import ACCESS_LOGGER
from users_service.models import users
from users_service.seed import seed_users

LUA = Path(__file__).resolve().parent / "lua"
SEEDED = int(os.environ.get("BENCH_USERS", "100000"))
CONNECTIONS = 64
ENDPOINTS = ("GET /users/{id}", "GET /users?limit=50", "POST /users", "PATCH /users/{id}")
API_KEY = secrets.token_urlsafe(24)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()] if children.exists() else []
        # With one worker uvicorn serves from its own process; with more,
        # the workers are its children (and it only supervises).
        return pids or [self.process.pid]

    def peak_rss_mib(self) -> float:
        peaks = []
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        return max(peaks)


@contextmanager
def serve(command: list[str], env: dict[str, str], log: Path) -> Iterator[Server]:
    """Run `command` (it listens on env["PORT"]) until the block ends."""
    with log.open("ab") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=log_file)
    server = Server(process, f"http://127.0.0.1:{env['PORT']}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(server.base_url + "/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{command} did not start; see {log}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=60)


def serve_ceiling(workers: int, log: Path) -> AbstractContextManager[Server]:
    """The bare app, by uvicorn with the service's server settings."""
    port = str(free_port())
    command = [
        sys.executable, "-m", "uvicorn", "benchmarks.ceiling:app",
        "--host", "127.0.0.1", "--port", port, "--workers", str(workers),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    return serve(command, service_env(PORT=port), log)


def serve_service(url: str, workers: int, log: Path) -> AbstractContextManager[Server]:
    """The service as docs/operations.md recommends running it in production: JSON
    access log on (to a file), metrics on, API keys required."""
    env = service_env(
        DATABASE_URL=url,
        ENVIRONMENT="production",
        API_KEYS=f"bench:{API_KEY}",
        CURSOR_SECRET=secrets.token_hex(16),
        LOG_LEVEL="INFO",
        WORKERS=str(workers),
        PORT=str(free_port()),
        # The cost of rate limiting (docs/performance.md): a limit `bench`
        # never reaches, counted in memory or in a Redis.
        RATE_LIMITS=os.environ.get("BENCH_RATE_LIMITS", ""),
        RATE_LIMIT_STORAGE_URL=os.environ.get("BENCH_RATE_LIMIT_STORAGE_URL", ""),
        RATE_LIMIT_KEY_PREFIX=f"users-service-bench-{secrets.token_hex(4)}",
    )
    return serve([sys.executable, "-m", "users_service", "serve"], env, log)


def measure_ceiling(workers: int, log: Path, seconds: float) -> WrkResult:
    """The bare app's requests/s, after a warm-up of 2 s."""
    with serve_ceiling(workers, log) as server:
        run_wrk(server.base_url + "/ping", connections=CONNECTIONS, threads=2, seconds=2)
        return run_wrk(
            server.base_url + "/ping", connections=CONNECTIONS, threads=2, seconds=seconds
        )


def wait_until_idle(server: Server, timeout: float = 10.0) -> None:
    """Wait until the service answers nothing but this poll. A request
    whose client wrk closed at the end of a block still runs to its end (a
    create waits for its group commit), and counts against the caller's
    MAX_REQUESTS_IN_FLIGHT_PER_CALLER (100): the next block's 64
    connections on top of those were refused 429 in its first 0.1 s
    (measured: 346 refused PATCHes right after a POST block)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(server.base_url + "/metrics", timeout=5).text
        in_flight = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("http_requests_in_flight")
        )
        if in_flight <= 1:  # this poll
            return
        time.sleep(0.05)


def drive(server: Server, endpoint: str, ids_file: Path, seconds: float) -> WrkResult:
    wait_until_idle(server)
    scripts = {
        "GET /users/{id}": ("/", LUA / "get_user.lua"),
        "GET /users?limit=50": ("/users?limit=50", None),
        "POST /users": ("/", LUA / "post_user.lua"),
        "PATCH /users/{id}": ("/", LUA / "patch_user.lua"),
    }
    path, script = scripts[endpoint]
    args = (str(ids_file),) if script is not None and "post" not in script.name else ()
    return run_wrk(
        server.base_url + path,
        connections=CONNECTIONS,
        threads=2,
        seconds=seconds,
        script=script,
        script_args=args,
        headers={"Authorization": f"Bearer {API_KEY}"},
    )


def error_report(log: Path, results: dict[str, WrkResult]) -> list[str]:
    """What the errors of a block were: wrk's socket errors, and the
    answers other than 2xx that the service's access log recorded."""
    lines = [
        f"- {endpoint}: {result.socket_error_kinds}"
        for endpoint, result in results.items()
        if result.socket_errors
    ]
    statuses: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # not a log record: a traceback, say
        if entry.get("logger") == ACCESS_LOGGER and not 200 <= entry["status"] < 300:
            statuses[f"{entry['method']} {entry['route']} {entry['status']}"] += 1
    lines += [f"- {answer}: {count} (access log)" for answer, count in statuses.most_common()]
    return lines


def row(name: str, result: WrkResult, ceiling: float) -> str:
    return (
        f"| {name} | {result.requests_per_second:,.0f} | {result.p50_ms:.1f} | "
        f"{result.p99_ms:.1f} | {result.non_2xx + result.socket_errors} | "
        f"{result.requests_per_second / ceiling:.0%} |"
    )


def main() -> int:
    require_wrk()
    seconds = float(os.environ.get("BENCH_SECONDS", "10"))
    worker_counts = [int(n) for n in os.environ.get("BENCH_WORKERS", "1,2").split(",")]
    rounds = int(os.environ.get("BENCH_ROUNDS", "1"))
    rates: dict[tuple[int, str, str], float] = {}
    shares: dict[tuple[int, str], list[float]] = {}
    print(f"# Throughput: wrk, {CONNECTIONS} connections, {seconds:g} s per endpoint; "
          f"{os.cpu_count()} cores; {SEEDED:,} users\n")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="users-bench-") as work_dir:
        work = Path(work_dir)
        databases = {}
        for backend in backends():
            url, engine = fresh_database(backend, work)
            seed_users(engine, SEEDED, progress=False)
            ids_file = work / f"ids-{backend}.txt"
            with engine.connect() as connection:
                ids = connection.execute(
                    select(users.c.id).order_by(func.random()).limit(10_000)
                ).scalars()
                ids_file.write_text("".join(f"{user_id}\n" for user_id in ids))
            engine.dispose()
            databases[backend] = (url, ids_file)
        for round_number, workers in (
            (n, workers) for n in range(1, rounds + 1) for workers in worker_counts
        ):
            lines = [
                f"## {workers} worker{'s' if workers > 1 else ''}"
                + (f", round {round_number} of {rounds}" if rounds > 1 else ""),
                "",
                "| target | requests/s | p50 ms | p99 ms | errors | of ceiling |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            ceiling_log = work / "ceiling.log"
            before = measure_ceiling(workers, ceiling_log, seconds)
            ceilings = [before.requests_per_second]
            memory = []
            errors: dict[str, list[str]] = {}
            for backend, (url, ids_file) in databases.items():
                log = work / f"service-{backend}-{workers}.log"
                results = {}
                with serve_service(url, workers, log) as server:
                    drive(server, "GET /users/{id}", ids_file, 2)  # warm up
                    for endpoint in ENDPOINTS:
                        results[endpoint] = drive(server, endpoint, ids_file, seconds)
                    memory.append(f"{backend} {server.peak_rss_mib():.0f} MiB")
                if any(r.non_2xx or r.socket_errors for r in results.values()):
                    errors[backend] = error_report(log, results)
                after = measure_ceiling(workers, ceiling_log, seconds)
                ceilings.append(after.requests_per_second)
                ceiling = (before.requests_per_second + after.requests_per_second) / 2
                lines.append(row(f"ceiling: GET /ping, before {backend}", before, ceiling))
                for endpoint, result in results.items():
                    rates[(workers, backend, endpoint)] = result.requests_per_second
                    lines.append(row(f"{backend}: {endpoint}", result, ceiling))
                    share = result.requests_per_second / ceiling
                    shares.setdefault((workers, f"{backend}: {endpoint}"), []).append(share)
                before = after
            lines.append(row("ceiling: GET /ping, at the end", before, ceiling))
            rates[(workers, "ceiling", "")] = sum(ceilings) / len(ceilings)
            lines += ["", "Peak resident memory per worker: " + ", ".join(memory) + "."]
            for backend, report in errors.items():
                lines += ["", f"Errors on {backend}:", *report]
            print("\n".join(lines) + "\n", flush=True)
    if rounds > 1:
        print(f"## Share of the ceiling over {rounds} rounds\n")
        print("| workers | target | median | lowest | highest |")
        print("| ---: | --- | ---: | ---: | ---: |")
        for (workers, name), values in shares.items():
            print(
                f"| {workers} | {name} | {statistics.median(values):.0%} | "
                f"{min(values):.0%} | {max(values):.0%} |"
            )
        print()
    if len(worker_counts) > 1:
        low, high = worker_counts[0], worker_counts[-1]
        print(f"## Scaling from {low} to {high} workers\n")
        print("| target | factor |\n| --- | ---: |")
        for (workers, backend, endpoint), rate in rates.items():
            if workers == low and (high, backend, endpoint) in rates:
                name = f"{backend}: {endpoint}" if endpoint else backend
                print(f"| {name} | {rates[(high, backend, endpoint)] / rate:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
