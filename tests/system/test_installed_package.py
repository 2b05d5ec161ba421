"""What we give others, installed as they would install it: the service's
wheel in a fresh virtualenv outside the checkout, and the client alone.

Each virtualenv is made once (no pip of its own: the suite's pip installs
into it with --python) from the package index and pip's cache, with the
pins of requirements.txt and requirements-dev.txt as constraints, so that
it installs what the suite was tested with. Measured on the 2-core machine:
about 30 s for the service's, 10 s for the client's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import httpx
import pytest

from tests.databases import migrate
from tests.server import (
    REPO_ROOT,
    RunningServer,
    free_port,
    running_server,
    service_env,
    stop,
    wait_until_healthy,
)

# What a production install must never bring along.
DEV_TOOLS = {"pytest", "mypy", "ruff", "hypothesis", "selenium", "schemathesis"}
# pip builds in the source tree (build/, *.egg-info): it builds a copy.
NOT_SOURCE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")


def build_wheel(root: Path, names: list[str], tmp: Path) -> Path:
    """Copy the files and folders `names` of the project at `root` to `tmp`,
    and build the project's wheel there."""
    project = tmp / "src"
    project.mkdir()
    for name in names:
        if (root / name).is_dir():
            shutil.copytree(root / name, project / name, ignore=NOT_SOURCE)
        else:
            shutil.copy2(root / name, project / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp), project],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp.glob("*.whl")
    return wheel


def make_venv(path: Path, *requirements: str | Path) -> Path:
    """A fresh virtualenv at `path` with `requirements` installed; its bin folder."""
    venv.create(path, with_pip=False)
    python = path / "bin" / "python"
    # Pins only: an `-r` line in a constraints file would install what it
    # names, and pip refuses a constraint with extras (`limits[redis]==...`).
    pins = [
        re.sub(r"\[[^\]]*\]", "", line)
        for name in ("requirements.txt", "requirements-dev.txt")
        for line in (REPO_ROOT / name).read_text().splitlines()
        if line and not line.startswith(("#", "-"))
    ]
    constraints = path.parent / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "-c", str(constraints), *map(str, requirements)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    return path / "bin"


def outside_env(**variables: str) -> dict[str, str]:
    """The environment of a process that must not see the checkout."""
    env = service_env(ENVIRONMENT="test", **variables)
    env.pop("PYTHONPATH", None)
    return env


def requirement_names(requirements: list[str]) -> set[str]:
    return {
        requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0]
        .strip().lower().replace("_", "-")
        for requirement in requirements
    }  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    names = ["pyproject.toml", "README.md", "users_service", "migrations"]
    return build_wheel(REPO_ROOT, names, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_venv(tmp_path_factory.mktemp("service") / "venv", wheel)


def test_a_production_install_has_no_test_or_lint_tool(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
        packaged = set(archive.namelist())
    requires: list[str] = metadata.get_all("Requires-Dist", [])
    runtime = requirement_names([r for r in requires if "extra ==" not in r])
    pinned = requirement_names(
        [line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
         if line and not line.startswith("#")]
    )  # fmt: skip

    assert {"fastapi", "sqlalchemy", "alembic", "uvicorn"} <= runtime
    assert not runtime & {"psycopg", "pymysql"}, "drivers are extras"
    assert sorted(metadata.get_all("Provides-Extra", [])) == ["mariadb", "postgresql", "tracing"]
    assert not requirement_names(requires) & DEV_TOOLS
    assert not pinned & DEV_TOOLS, "requirements.txt is the runtime set"
    # Every module of the package, and every migration, is in the wheel.
    modules = (REPO_ROOT / "users_service").rglob("*.py")
    assert {str(p.relative_to(REPO_ROOT)) for p in modules} <= packaged
    migrations = (REPO_ROOT / "migrations").rglob("*.py")
    assert {f"users_service/{p.relative_to(REPO_ROOT)}" for p in migrations} <= packaged


def test_the_installed_wheel_migrates_serves_and_transfers_outside_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    env = outside_env(DATABASE_URL=f"sqlite:///{tmp_path / 'users.db'}")

    def cli(*arguments: str) -> str:
        done = subprocess.run(
            [installed / "users-service", *arguments],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run(
        [installed / "python", "-c", "import users_service; print(users_service.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(installed.parent)), where
    cli("migrate")
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [installed / "users-service", "serve"],
            cwd=tmp_path, env={**env, "HOST": "127.0.0.1", "PORT": str(port)},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_healthy(server, timeout=60)  # a first start compiles every module
        created = httpx.post(
            f"{server.base_url}/users", json={"name": "Ada", "email": "ada@example.com", "age": 36}
        )
        assert created.status_code == 201, created.text
        read = httpx.get(f"{server.base_url}{created.headers['Location']}")
        assert read.json() == created.json()
        # The schema is at the newest migration: the packaged ones were found.
        assert httpx.get(f"{server.base_url}/readyz").json()["schema"] == "current"
        assert httpx.get(f"{server.base_url}/docs").status_code == 200
    finally:
        stop(process)

    cli("seed", "4")
    cli("export", "--no-progress", "--output", "users.jsonl")
    assert len((tmp_path / "users.jsonl").read_text().splitlines()) == 5
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'copy.db'}"
    cli("migrate")
    assert "imported 5" in cli("import", "--no-progress", "users.jsonl")
    openapi = json.loads(cli("openapi"))
    assert openapi == json.loads((REPO_ROOT / "openapi.json").read_text())


def test_the_client_installed_alone_works_against_a_real_server(tmp_path: Path) -> None:
    client = REPO_ROOT / "clients" / "python"
    names = ["pyproject.toml", "README.md", "users_service_client"]
    bin_dir = make_venv(tmp_path / "venv", build_wheel(client, names, tmp_path))
    database_url = f"sqlite:///{tmp_path / 'users.db'}"
    migrate(database_url)

    with running_server(database_url, tmp_path / "server.log") as server:
        done = subprocess.run(
            [bin_dir / "python", REPO_ROOT / "tests" / "system" / "client_alone.py",
             server.base_url],
            cwd=tmp_path, env=outside_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "server packages: []",
        "created Ada Lovelace 1",
        "read ada@example.com",
        "pages ['ada@example.com', 'user0@example.com'] ['user1@example.com', 'user2@example.com']",
        "iterated 4",
        "updated 37 2",
        "stale 412 version_mismatch",
        "taken 409 email_taken ('body', 'email')",
        "invalid 422 validation_failed ('body', 'email')",
        "deleted 404 user_not_found",
        "async Grace Hopper",
    ]
