"""Transfer benchmark: import and export a million users through the CLI.

For each database: writes a CSV of N synthetic users (name,email,age),
imports it into a fresh database with `users-service import`, imports it
again (everything already present), exports it with `users-service export`
as JSON Lines and as CSV, and prints the elapsed time and peak memory of
each command (each one a real process, timed from outside).

    make bench-transfer                                   # SQLite and PostgreSQL, 1M users
    BENCH_USERS=100000 BENCH_DATABASES=sqlite make bench-transfer

PostgreSQL and MariaDB use the databases named by BENCH_POSTGRESQL_URL and
BENCH_MARIADB_URL, which are dropped and created anew.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.databases import backends, fresh_database
from tests.server import REPO_ROOT, service_env
from users_service.seed import synthetic_users

CLI = [sys.executable, "-m", "users_service"]


def write_csv(path: Path, count: int) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", "email", "age"])
        for user in synthetic_users(count, seed=1):
            writer.writerow([user["name"], user["email"], user["age"]])


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float, str]:
    """Run `command`; its wall time (s), its own peak resident memory (MiB), its output."""
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
    return elapsed, usage.ru_maxrss / 1024, text


def main() -> None:
    count = int(os.environ.get("BENCH_USERS", "1000000"))
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    source = work / "users.csv"
    write_csv(source, count)
    size = source.stat().st_size / 2**20
    print(f"{count:,} users, {size:.0f} MiB of CSV; load average {os.getloadavg()}")
    rows = []
    for backend in backends():
        url, engine = fresh_database(backend, work)
        engine.dispose()
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
        for step, command in steps.items():
            elapsed, peak, output = timed(command, env, work / "log.txt")
            rows.append((backend, step, elapsed, count / elapsed, peak))
            print(f"{backend} {step}: {elapsed:.1f} s, {output.splitlines()[-1]}", flush=True)
    print(f"\nload average after: {os.getloadavg()}\n")
    print("| database | step | seconds | users/s | peak memory MiB |")
    print("| --- | --- | ---: | ---: | ---: |")
    for backend, step, elapsed, rate, peak in rows:
        print(f"| {backend} | {step} | {elapsed:.1f} | {rate:,.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
