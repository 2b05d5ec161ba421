"""Transfer benchmark: import and export a million users through the CLI.

For each database: writes a CSV of N synthetic users (name,email,age),
imports it into a fresh database with `users-service import`, imports it
again (everything already present), exports it with `users-service export`
as JSON Lines and as CSV, and prints the elapsed time, peak memory and
bytes written of each command (each one a real process, measured from
outside: its own writes, and the database server's by its counters),
beside the size of the users table (SQLite: the database file).

    make bench-transfer                                   # SQLite and PostgreSQL, 1M users
    BENCH_USERS=100000 BENCH_DATABASES=sqlite make bench-transfer

PostgreSQL and MariaDB use the databases named by BENCH_POSTGRESQL_URL and
BENCH_MARIADB_URL, which are dropped and created anew.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from benchmarks.databases import (
    backends,
    database_size,
    fresh_database,
    server_bytes_written,
)
from tests.helpers import write_users_csv
from tests.server import REPO_ROOT, service_env

CLI = [sys.executable, "-m", "users_service"]


@dataclass
class Step:
    seconds: float
    peak_mib: float  # the command's own peak resident memory
    written: int  # bytes: the command's own writes (its rusage) and the server's
    output: str


def timed(command: list[str], env: dict[str, str], log: Path, engine: Engine) -> Step:
    """Run `command` and measure it from outside."""
    server_before = server_bytes_written(engine)
    with log.open("w+") as output:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        _pid, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().strip()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{text}")
    # ru_oublock is the child's write_bytes (/proc/PID/io) in 512-byte blocks.
    written = usage.ru_oublock * 512 + server_bytes_written(engine) - server_before
    return Step(elapsed, usage.ru_maxrss / 1024, written, text)


def main() -> None:
    count = int(os.environ.get("BENCH_USERS", "1000000"))
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    source = work / "users.csv"
    write_users_csv(source, count)
    size = source.stat().st_size / 2**20
    print(f"{count:,} users, {size:.0f} MiB of CSV; load average {os.getloadavg()}")
    rows = []
    for backend in backends():
        url, engine = fresh_database(backend, work)
        env = service_env(DATABASE_URL=url, ENVIRONMENT="test")
        steps = {
            "import": [*CLI, "import", str(source), "--no-progress"],
            "import again": [*CLI, "import", str(source), "--no-progress"],
            "export jsonl": [*CLI, "export", "--no-progress", "-o", str(work / "out.jsonl")],
            "export csv": [
                *CLI,
                *("export", "--no-progress", "--format", "csv", "-o", str(work / "out.csv")),
            ],
        }
        for name, command in steps.items():
            step = timed(command, env, work / "log.txt", engine)
            size = database_size(engine)
            rows.append((backend, name, step, size))
            last_line = step.output.splitlines()[-1]
            print(f"{backend} {name}: {step.seconds:.1f} s, {last_line}", flush=True)
        engine.dispose()
    print(f"\nload average after: {os.getloadavg()}\n")
    print(
        "| database | step | seconds | users/s | peak memory MiB | written MB | users table MB"
        " | written / table |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for backend, name, step, size in rows:
        print(
            f"| {backend} | {name} | {step.seconds:.1f} | {count / step.seconds:,.0f}"
            f" | {step.peak_mib:.0f} | {step.written / 1e6:,.0f} | {size / 1e6:,.0f}"
            f" | {step.written / size:.2f}x |"
        )


if __name__ == "__main__":
    main()
