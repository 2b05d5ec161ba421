"""openapi.json is good enough for a standard generator: a client made from it
by openapi-python-client works against a real server, and every problem
answer comes back parsed as the problem model, not as an undocumented response."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.databases import migrate
from tests.server import REPO_ROOT, RunningServer, running_server

BIN = Path(sys.executable).parent
PACKAGE = "generated_users_client"
KEY = "generated-client-key-0123456789"
OPERATIONS = ["create_user", "get_user", "list_users", "update_user", "delete_user"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The generated package's modules, imported from a temporary directory."""
    out = tmp_path_factory.mktemp("generated")
    done = subprocess.run(
        [BIN / "openapi-python-client", "generate", "--path", REPO_ROOT / "openapi.json",
         "--meta", "none", "--output-path", out / PACKAGE],
        # Its post-generation hooks run ruff, which is the suite's.
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    names = ["client", "models", *(f"api.users.{op}" for op in OPERATIONS)]
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(out))
        modules = {name: importlib.import_module(f"{PACKAGE}.{name}") for name in names}
        yield SimpleNamespace(**{name.rsplit(".", 1)[-1]: m for name, m in modules.items()})
    for module in [m for m in sys.modules if m.partition(".")[0] == PACKAGE]:
        del sys.modules[module]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("server")
    database_url = f"sqlite:///{tmp / 'users.db'}"
    migrate(database_url)
    with running_server(database_url, tmp / "server.log", {"API_KEYS": f"generated:{KEY}"}) as s:
        yield s


def assert_problem(answer: Any, g: SimpleNamespace, status: int, code: str) -> Any:
    assert answer.status_code == status, answer.content
    problem = answer.parsed
    assert isinstance(problem, g.models.ProblemDetails), answer.content
    assert problem.status == status
    assert problem.code == g.models.ErrorCode(code)
    assert problem.request_id == answer.headers["X-Request-ID"]
    return problem


def test_a_generated_client_creates_reads_lists_patches_and_deletes(
    generated: SimpleNamespace, server: RunningServer
) -> None:
    g, models = generated, generated.models
    # An undocumented status would raise UnexpectedStatus instead of parsing.
    with g.client.AuthenticatedClient(
        server.base_url, token=KEY, raise_on_unexpected_status=True
    ) as client:

        def create(**fields: Any) -> Any:
            return g.create_user.sync_detailed(client=client, body=models.UserCreate(**fields))

        created = create(name="Ada Lovelace", email="ada@example.com", age=36)
        assert created.status_code == 201, created.content
        ada = created.parsed
        assert isinstance(ada, models.UserPublic)
        assert (ada.email, ada.version) == ("ada@example.com", 1)
        read = g.get_user.sync(str(ada.id), client=client)
        assert read.to_dict() == ada.to_dict()

        for n in range(2):
            assert create(name=f"User {n}", email=f"user{n}@example.com", age=20).status_code == 201
        first = g.list_users.sync(client=client, limit=2, sort=models.ListUsersSort.EMAIL)
        assert [u.email for u in first.items] == ["ada@example.com", "user0@example.com"]
        second = g.list_users.sync(
            client=client, limit=2, sort=models.ListUsersSort.EMAIL, cursor=first.next_cursor
        )
        assert [u.email for u in second.items] == ["user1@example.com"]
        assert second.next_cursor is None

        patched = g.update_user.sync_detailed(
            str(ada.id), client=client, body=models.UserUpdate(age=37), if_match='"1"'
        )
        assert patched.status_code == 200, patched.content
        assert (patched.parsed.age, patched.parsed.version) == (37, 2)
        assert patched.headers["ETag"] == '"2"'

        stale = g.update_user.sync_detailed(
            str(ada.id), client=client, body=models.UserUpdate(age=38), if_match='"1"'
        )
        assert_problem(stale, g, 412, "version_mismatch")
        taken = assert_problem(
            create(name="Ada again", email="ADA@example.com", age=1), g, 409, "email_taken"
        )
        assert [e.loc for e in taken.errors] == [["body", "email"]]
        invalid = assert_problem(
            create(name="Bad", email="not an email", age=200), g, 422, "validation_failed"
        )
        assert {tuple(e.loc) for e in invalid.errors} == {("body", "email"), ("body", "age")}
        assert all(e.msg and e.type_ for e in invalid.errors)

        deleted = g.delete_user.sync_detailed(str(ada.id), client=client, if_match='"2"')
        assert deleted.status_code == 204, deleted.content
        gone = g.get_user.sync_detailed(str(ada.id), client=client)
        assert_problem(gone, g, 404, "user_not_found")
