"""Import and export on the command line, as real processes: what they print,
their exit status, and the documented examples run as written."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

from sqlalchemy import func, select

from tests.api.test_transfer import (
    CSV_WITH_MISTAKES,
    FORMULA_CELLS,
    create_formula_users,
    csv_rows,
    export,
    files_in,
    listing,
    read_jsonl,
    read_rejects_csv,
    write,
)
from tests.helpers import create_ada, user_count
from tests.server import REPO_ROOT, service_env
from users_service.models import users
from users_service.seed import seed_users

BIN = Path(sys.executable).parent


def run_cli(command: list[str], database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env=service_env(DATABASE_URL=database_url, ENVIRONMENT="test"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_command_line_imports_and_exports_as_real_processes(
    client, app, database_url, tmp_path
):
    source = write(tmp_path / "users.csv", CSV_WITH_MISTAKES)
    # python -m users_service, with the default worker processes checking rows
    done = run_cli(
        [sys.executable, "-m", "users_service", "import", str(source), "--workers", "2"],
        database_url,
        REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported 2, already present 0, rejected 6 of 8 rows in ")
    assert "import: 100%" in done.stderr  # the progress bar, on stderr
    assert len(read_rejects_csv(tmp_path / "users.rejects.csv")) == 6

    # the console script that make install puts in .venv/bin
    script = shutil.which("users-service", path=str(BIN))
    assert script, "make install should install the users-service command"
    done = run_cli([script, "export", "--format", "csv", "--no-progress"], database_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == export(app, "csv").decode()
    assert done.stderr.startswith("exported 2 users in ")

    done = run_cli([script, "import", "missing.csv"], database_url, tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("users-service: [Errno 2] No such file")
    assert "Traceback" not in done.stderr


def test_the_command_line_says_when_the_database_fails_without_a_traceback(tmp_path):
    source = write(tmp_path / "users.csv", "name,email,age\nAda,ada@example.com,36\n")
    never_migrated = f"sqlite:///{tmp_path / 'empty.db'}"
    done = run_cli(
        [sys.executable, "-m", "users_service", "import", str(source)], never_migrated, REPO_ROOT
    )
    assert done.returncode == 1
    assert done.stderr.strip().endswith("users-service: the database failed: no such table: users")
    assert "Traceback" not in done.stderr


def documented_example() -> str:
    """The first shell block of docs/import-export.md."""
    text = (REPO_ROOT / "docs" / "import-export.md").read_text()
    return text.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_documented_examples_run_as_written(tmp_path):
    database = tmp_path / "users.db"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", documented_example()],
        cwd=tmp_path,
        env=service_env(
            DATABASE_URL=f"sqlite:///{database}",
            PATH=f"{BIN}:{service_env()['PATH']}",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summaries = [line for line in done.stdout.splitlines() if line.startswith("imported")]
    assert [s.split(" of ")[0] for s in summaries] == [
        "imported 2, already present 0, rejected 2",
        "imported 0, already present 2, rejected 2",
        "imported 0, already present 2, rejected 0",
    ]
    assert "the same email as line 2" in (tmp_path / "users.rejects.csv").read_text()
    assert len(read_jsonl(tmp_path / "users.jsonl")) == 2
    with (tmp_path / "backup.csv").open() as backup:
        assert len(list(csv.DictReader(backup))) == 2
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(users)).scalar() == 2
    engine.dispose()


# --- files the commands write ---------------------------------------------


def cli(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli([sys.executable, "-m", "users_service", *args], database_url, cwd)


def assert_refused(done: subprocess.CompletedProcess[str], reason: str) -> None:
    """Exit status 2, and one line on stderr that says why."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("users-service: ") and reason in line, line


def test_import_refuses_rejects_named_like_its_input_and_leaves_it_whole(
    client, database_url, tmp_path
):
    rows = "".join(f"User {n},user{n}@example.com,{n % 150}\n" for n in range(50_001))
    source = write(tmp_path / "big.csv", "name,email,age\n" + rows)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    done = cli(database_url, tmp_path, "import", "big.csv", "--rejects", "big.csv")
    assert_refused(done, "big.csv is the file being imported")
    done = cli(database_url, tmp_path, "import", "big.csv", "--rejects", "./big.csv")
    assert_refused(done, "is the file being imported")

    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest
    assert user_count(client) == 0
    assert files_in(tmp_path) == ["big.csv"]


def sqlite_users(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        count: int = connection.execute("SELECT count(*) FROM users").fetchone()[0]
    connection.close()
    return count


def test_export_refuses_to_write_over_the_sqlite_database_it_reads(tmp_path):
    url = "sqlite:///users.db"  # relative, as in the default DATABASE_URL
    assert cli(url, tmp_path, "migrate").returncode == 0
    assert cli(url, tmp_path, "seed", "300").returncode == 0
    database = tmp_path / "users.db"
    digest = hashlib.sha256(database.read_bytes()).hexdigest()
    os.link(database, tmp_path / "hard-link.db")

    for output in ["users.db", "./users.db", str(database), "hard-link.db", "users.db-wal"]:
        done = cli(url, tmp_path, "export", "--no-progress", "--output", output)
        assert_refused(done, "is the database")
    done = cli(url, tmp_path, "export", "--no-progress", "--output", "users.jsonl")
    assert done.returncode == 0, done.stderr

    assert hashlib.sha256(database.read_bytes()).hexdigest() == digest
    assert sqlite_users(database) == 300
    assert len(read_jsonl(tmp_path / "users.jsonl")) == 300


def test_symbolic_link_outputs_are_refused_and_their_targets_left_alone(
    client, database_url, tmp_path
):
    create_ada(client)
    target = write(tmp_path / "precious.txt", "precious\n")
    (tmp_path / "users.jsonl").symlink_to(target)
    (tmp_path / "bad.csv").symlink_to(target)
    write(tmp_path / "users.csv", "name,email,age\nAlan,alan@example.com,400\n")

    done = cli(database_url, tmp_path, "export", "--no-progress", "--output", "users.jsonl")
    assert_refused(done, "users.jsonl is a symbolic link")
    done = cli(database_url, tmp_path, "import", "users.csv", "--rejects", "bad.csv")
    assert_refused(done, "bad.csv is a symbolic link")
    assert target.read_text() == "precious\n"
    assert user_count(client) == 1


def test_a_clean_import_leaves_the_rejects_file_of_an_earlier_run_alone(
    client, database_url, tmp_path
):
    rejected_before = "line,code,reason,name,email,age\n2,malformed,from an earlier run,a,b,c\n"
    earlier = write(tmp_path / "users.rejects.csv", rejected_before)
    write(tmp_path / "users.csv", "name,email,age\nAda,ada@example.com,36\n")
    done = cli(database_url, tmp_path, "import", "users.csv", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported 1, already present 0, rejected 0 of 1 rows")
    assert "rejected rows" not in done.stdout  # it names the rejects file only when there are some
    assert earlier.read_text() == rejected_before
    assert files_in(tmp_path) == ["users.csv", "users.rejects.csv"]


def test_formula_like_names_leave_as_quoted_csv_cells_and_come_back_exactly(
    client, app, database_url, tmp_path
):
    created = create_formula_users(client)
    before = listing(client)
    done = cli(database_url, tmp_path, "export", "--format", "csv", "-o", "users.csv")
    assert done.returncode == 0, done.stderr
    exported = (tmp_path / "users.csv").read_bytes()
    assert {row[1] for row in csv_rows(exported)} == set(FORMULA_CELLS.values())
    raw = cli(database_url, tmp_path, "export", "--format", "csv", "--raw", "--no-progress")
    assert [row[1] for row in csv_rows(raw.stdout.encode())] == [u["name"] for u in created]

    with app.state.database.engine.begin() as connection:
        connection.execute(users.delete())
    done = cli(database_url, tmp_path, "import", "users.csv", "--no-progress")
    assert done.stdout.startswith(f"imported {len(created)}, already present 0, rejected 0 ")
    assert listing(client) == before
    assert export(app, "csv") == exported


def partial_file_sizes(directory: Path) -> list[int]:
    """The sizes of the files an export is writing (hidden, next to its output)."""
    sizes = []
    for path in directory.glob(".users.jsonl.*"):
        with suppress(FileNotFoundError):  # renamed meanwhile
            sizes.append(path.stat().st_size)
    return sizes


def test_an_export_stopped_half_way_leaves_the_previous_file_and_nothing_else(
    client, app, database_url, tmp_path
):
    # One user per page: thousands of statements, time enough to stop it.
    seed_users(app.state.database.engine, 5_000, progress=False)
    previous = write(tmp_path / "users.jsonl", "the previous export\n")
    command = [sys.executable, "-m", "users_service", "export", "--no-progress"]
    process = subprocess.Popen(
        [*command, "--batch-size", "1", "--output", "users.jsonl"],
        cwd=tmp_path,
        env=service_env(DATABASE_URL=database_url, ENVIRONMENT="test"),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(size > 0 for size in partial_file_sizes(tmp_path)):
        assert process.poll() is None and time.monotonic() < deadline, "export ended too soon"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert previous.read_text() == "the previous export\n"
    assert files_in(tmp_path) == ["users.jsonl"]
