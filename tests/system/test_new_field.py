"""A new optional field is one line in models.py plus `make revision`.

In a scratch copy of the repository, the test does what a maintainer would:
adds `nickname: str | None = Field(default=None, max_length=50)` to
`UserFields`, runs `make revision`, migrates, serves the copy, and checks
that the field round-trips through every path: POST, PUT, PATCH, GET, the
list, import and export in both formats, the Python client and
/openapi.json, and that a bad value is a 422 naming it. Nothing else in the
copy is edited by hand: the test checks which files changed.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.databases import create_fresh_database
from tests.server import REPO_ROOT, RunningServer, free_port, service_env, wait_until_healthy

FIELD_LINE = "    nickname: str | None = Field(default=None, max_length=50)\n"
VENV = Path(sys.prefix)


def scratch_copy(destination: Path) -> Path:
    """The repository's files (tracked and new, not ignored) copied to `destination`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def add_the_field(copy: Path) -> None:
    models = copy / "users_service" / "models.py"
    lines = models.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("class UserFields("))
    last = max(i for i in range(start, len(lines)) if lines[i].startswith("    age: "))
    lines.insert(last + 1, FIELD_LINE)
    models.write_text("".join(lines))


def make(copy: Path, target: str, database_url: str, *arguments: str) -> None:
    done = subprocess.run(
        ["make", "-C", str(copy), target, "SETUP=", f"VENV={VENV}", *arguments],
        env=service_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def cli(copy: Path, database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "users_service", *arguments],
        cwd=copy,
        env=service_env(DATABASE_URL=database_url, ENVIRONMENT="test"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def changed_files(copy: Path) -> set[str]:
    changed = set()
    for path in copy.rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".db", ".pyc"):
            continue
        relative = path.relative_to(copy)
        original = REPO_ROOT / relative
        if not original.is_file() or original.read_bytes() != path.read_bytes():
            changed.add(str(relative.parent if "versions" in relative.parts else relative))
    return changed


@pytest.fixture
def served_copy(backend: str, tmp_path: Path) -> Iterator[tuple[Path, str, RunningServer]]:
    copy = scratch_copy(tmp_path / "copy")
    database_url = create_fresh_database(backend, tmp_path, "_new_field")

    add_the_field(copy)
    make(copy, "revision", database_url, "m=add nickname")
    make(copy, "migrate", database_url)

    assert changed_files(copy) == {
        "users_service/models.py",
        "migrations/versions",
        "openapi.json",
        "clients/python/users_service_client/models.py",
    }
    port = free_port()
    log_path = tmp_path / "server.log"
    env = service_env(DATABASE_URL=database_url, PORT=str(port), ENVIRONMENT="test")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "users_service", "serve"],
            cwd=copy,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_healthy(server)
        yield copy, database_url, server
    finally:
        process.kill()
        process.wait(timeout=10)


def test_a_new_optional_field_round_trips_everywhere(
    served_copy: tuple[Path, str, RunningServer],
) -> None:
    copy, database_url, server = served_copy
    http = httpx.Client(base_url=server.base_url, timeout=10)

    document = http.get("/openapi.json").json()
    for schema in ("UserCreate", "UserReplace", "UserUpdate", "UserPublic"):
        assert "nickname" in document["components"]["schemas"][schema]["properties"], schema

    created = http.post("/users", json={"name": "Ada", "email": "ada@x.io", "age": 36})
    assert created.status_code == 201, created.text
    assert created.json()["nickname"] is None
    user_id = created.json()["id"]
    with_nickname = http.post(
        "/users", json={"name": "Grace", "email": "grace@x.io", "age": 85, "nickname": "Amazing"}
    )
    assert with_nickname.json()["nickname"] == "Amazing"

    patched = http.patch(f"/users/{user_id}", json={"nickname": "Countess"})
    assert (patched.status_code, patched.json()["nickname"]) == (200, "Countess")
    assert patched.json()["version"] == 2
    assert http.get(f"/users/{user_id}").json()["nickname"] == "Countess"
    replaced = http.put(f"/users/{user_id}", json={"name": "Ada", "email": "ada@x.io", "age": 36})
    assert (replaced.status_code, replaced.json()["nickname"]) == (200, None)
    patched = http.patch(f"/users/{user_id}", json={"nickname": "Enchantress"})
    cleared = http.patch(f"/users/{user_id}", json={"nickname": None})
    assert (cleared.status_code, cleared.json()["nickname"]) == (200, None)
    assert http.get(f"/users/{user_id}").json() == cleared.json()

    listed = http.get("/users", params={"sort": "name"}).json()["items"]
    assert [(u["name"], u["nickname"]) for u in listed] == [("Ada", None), ("Grace", "Amazing")]

    for bad in ("x" * 51, 7, ["list"]):
        body = {"name": "B", "email": "b@x.io", "age": 1, "nickname": bad}
        refused = http.post("/users", json=body)
        assert refused.status_code == 422, refused.text
        assert [e["loc"] for e in refused.json()["errors"]] == [["body", "nickname"]]
    refused = http.patch(f"/users/{user_id}", json={"nickname": "y" * 51})
    assert [e["loc"] for e in refused.json()["errors"]] == [["body", "nickname"]]

    # export and import, both formats
    exported_csv = cli(copy, database_url, "export", "--format", "csv", "--no-progress").stdout
    rows = list(csv.DictReader(io.StringIO(exported_csv)))
    assert {row["name"]: row["nickname"] for row in rows} == {"Ada": "", "Grace": "Amazing"}
    exported_jsonl = cli(copy, database_url, "export", "--no-progress").stdout
    assert {json.loads(line)["nickname"] for line in exported_jsonl.splitlines()} == {
        None,
        "Amazing",
    }
    source = copy / "more.csv"
    source.write_text("name,email,age,nickname\nAlan,alan@x.io,41,Prof\nKen,ken@x.io,80,\n")
    assert cli(copy, database_url, "import", str(source), "--no-progress").stdout.startswith(
        "imported 2,"
    )
    source = copy / "more.jsonl"
    source.write_text('{"name": "Edsger", "email": "ewd@x.io", "age": 72, "nickname": "EWD"}\n')
    assert cli(copy, database_url, "import", str(source), "--no-progress").stdout.startswith(
        "imported 1,"
    )
    by_name = {u["name"]: u["nickname"] for u in http.get("/users").json()["items"]}
    assert by_name == {
        "Ada": None,
        "Grace": "Amazing",
        "Alan": "Prof",
        "Ken": None,
        "Edsger": "EWD",
    }

    # the copy's Python client, generated from the copy's openapi.json
    script = textwrap.dedent(
        f"""
        import users_service_client
        from users_service_client import UsersClient
        where = users_service_client.__file__
        assert where.startswith({str(copy)!r}), where
        with UsersClient({server.base_url!r}) as client:
            user = client.create_user(name="Barbara", email="bl@x.io", age=86, nickname="Liskov")
            assert client.get_user(user.id).nickname == "Liskov"
            assert client.update_user(user, nickname="BL").nickname == "BL"
            replaced = client.replace_user(user.id, name="B", email="bl@x.io", age=86)
            assert replaced.nickname is None
            print("client ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=service_env(PYTHONPATH=str(copy / "clients" / "python")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "client ok" in done.stdout, done.stdout + done.stderr
