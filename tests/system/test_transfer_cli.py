"""Import and export on the command line, as real processes: what they print,
their exit status, and the documented examples run as written."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from tests.api.test_transfer import CSV_WITH_MISTAKES, export, read_jsonl, read_rejects_csv, write
from tests.server import REPO_ROOT, service_env
from users_service.models import users

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
