"""Two service processes on one database, driven at once: the same
guarantees as one process (one user per email, one answer per
Idempotency-Key, one winner per version).

Requests alternate between the replicas and are released together
(`tests.helpers.race`). The two servers run for the whole module; every
test uses emails and keys of its own.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from tests.databases import create_fresh_database, migrate
from tests.helpers import assert_problem, race
from tests.server import running_server

REPLICAS = 2
RACERS = 16


@pytest.fixture(scope="module")
def replicas(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[httpx.Client]]:
    """A client on each of two servers sharing one fresh database."""
    tmp_path = tmp_path_factory.mktemp(f"replicas-{backend}")
    url = create_fresh_database(backend, tmp_path, "_replicas")
    migrate(url)
    with ExitStack() as stack:
        servers = [
            stack.enter_context(running_server(url, tmp_path / f"replica{n}.log"))
            for n in range(REPLICAS)
        ]
        yield [
            stack.enter_context(
                httpx.Client(
                    base_url=server.base_url,
                    timeout=30,
                    limits=httpx.Limits(max_connections=RACERS),
                )
            )
            for server in servers
        ]


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(response.status_code for response in responses)


def unique_email() -> str:
    return f"replica-{uuid.uuid4().hex[:12]}@example.com"


def users_with_email(replicas: list[httpx.Client], email: str) -> list[list[dict[str, Any]]]:
    """What each replica lists for `email`."""
    listed = []
    for client in replicas:
        response = client.get("/users", params={"email": email})
        assert response.status_code == 200, response.text
        listed.append(response.json()["items"])
    return listed


def test_racing_creates_of_one_email_across_replicas_make_one_user_and_409s(
    replicas: list[httpx.Client],
) -> None:
    email = unique_email()

    responses = race(
        RACERS,
        lambda i: replicas[i % REPLICAS].post(
            "/users", json={"name": f"Racer {i}", "email": email, "age": 30}
        ),
    )

    assert statuses(responses) == {201: 1, 409: RACERS - 1}, [r.text for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "email_taken")
    [created] = [r.json() for r in responses if r.status_code == 201]
    assert users_with_email(replicas, email) == [[created]] * REPLICAS


def test_one_idempotency_key_sent_to_both_replicas_at_once_creates_one_user(
    replicas: list[httpx.Client],
) -> None:
    email = unique_email()
    body = f'{{"name": "Ada Lovelace", "email": "{email}", "age": 36}}'.encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": f"replicas-{uuid.uuid4()}"}

    def post(replica: int) -> httpx.Response:
        return replicas[replica % REPLICAS].post("/users", content=body, headers=headers)

    responses = race(RACERS, post)
    retries = [post(replica) for replica in range(REPLICAS)]

    first = [
        r for r in responses if r.status_code == 201 and "idempotency-replayed" not in r.headers
    ]
    replayed = sum(r.headers.get("idempotency-replayed") == "true" for r in responses)
    print(f"\nsame key x{RACERS}: {statuses(responses)}, {replayed} replayed")
    assert len(first) == 1, [(r.status_code, dict(r.headers), r.text) for r in responses]
    [original] = first
    for response in [*responses, *retries]:
        if response is original:
            continue
        if response.status_code == 409:
            assert_problem(response, 409, "idempotency_key_in_use")
            continue
        assert response.status_code == 201, response.text
        assert response.headers["idempotency-replayed"] == "true"
        assert response.content == original.content
        assert response.headers["location"] == original.headers["location"]
        assert response.headers["etag"] == original.headers["etag"]
    for retry in retries:  # once the first has answered, every replica replays it
        assert retry.status_code == 201, retry.text
    assert users_with_email(replicas, email) == [[original.json()]] * REPLICAS


def test_if_match_races_across_replicas_let_exactly_one_win_per_version(
    replicas: list[httpx.Client],
) -> None:
    created = replicas[0].post("/users", json={"name": "Origin", "email": unique_email(), "age": 1})
    assert created.status_code == 201, created.text
    location = created.headers["location"]

    for version in (1, 2, 3):
        responses = race(
            RACERS,
            lambda i, version=version: replicas[i % REPLICAS].patch(  # type: ignore[misc]
                location,
                json={"name": f"Round {version} patcher {i}", "age": version * 10 + i},
                headers={"If-Match": f'"{version}"'},
            ),
        )

        assert statuses(responses) == {200: 1, 412: RACERS - 1}, [r.text for r in responses]
        for response in responses:
            if response.status_code == 412:
                assert_problem(response, 412, "version_mismatch")
        [winner] = [r for r in responses if r.status_code == 200]
        assert winner.json()["version"] == version + 1
        assert winner.headers["etag"] == f'"{version + 1}"'
        for client in replicas:
            current = client.get(location)
            assert current.json() == winner.json()
            assert current.headers["etag"] == winner.headers["etag"]


def test_listing_cursor_from_one_replica_pages_on_the_other(
    replicas: list[httpx.Client],
) -> None:
    name = f"Pager {uuid.uuid4().hex[:8]}"
    created = [
        replicas[0].post("/users", json={"name": f"{name} {n}", "email": unique_email(), "age": n})
        for n in range(5)
    ]
    assert all(r.status_code == 201 for r in created), [r.text for r in created]

    pages, cursor, replica = [], None, 0
    while True:
        params: dict[str, str | int] = {"name": name, "sort": "age", "limit": 2}
        response = replicas[replica % REPLICAS].get(
            "/users", params=params if cursor is None else {**params, "cursor": cursor}
        )
        assert response.status_code == 200, response.text
        pages.append(response.json()["items"])
        cursor, replica = response.json()["next_cursor"], replica + 1
        if cursor is None:
            break

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [user for page in pages for user in page] == [r.json() for r in created]
