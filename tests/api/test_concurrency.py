"""Concurrent writers: racing creates, many SQLite writers, racing PATCHes."""

from __future__ import annotations

from collections import Counter
from typing import TypeVar

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.helpers import assert_problem, race

T = TypeVar("T")


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(response.status_code for response in responses)


def test_racing_creates_of_one_email_make_one_user_and_409s(client: TestClient) -> None:
    email = "race@example.com"

    responses = race(
        20,
        lambda i: client.post("/users", json={"name": f"Racer {i}", "email": email, "age": 30}),
    )

    assert statuses(responses) == {201: 1, 409: 19}, [r.text for r in responses]
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "email_taken")
    [created] = [r.json() for r in responses if r.status_code == 201]
    listed = client.get("/users", params={"email": email, "include_total": "true"})
    assert listed.status_code == 200
    assert listed.json()["items"] == [created]
    assert listed.json()["total"] == 1


def test_racing_creates_of_one_email_in_different_letter_cases_make_one_user(
    client: TestClient,
) -> None:
    emails = [f"{'Case'[: i % 4]}{'case'[i % 4 :]}@Example.COM" for i in range(20)]

    responses = race(
        20,
        lambda i: client.post("/users", json={"name": f"Racer {i}", "email": emails[i], "age": 30}),
    )

    assert statuses(responses) == {201: 1, 409: 19}, [r.text for r in responses]
    listed = client.get("/users", params={"email": "case@example.com", "include_total": "true"})
    assert listed.json()["total"] == 1


@pytest.mark.backends("sqlite")  # the write lock is a SQLite matter
def test_fifty_concurrent_sqlite_writers_all_succeed(backend: str, client: TestClient) -> None:

    responses = race(
        50,
        lambda i: client.post(
            "/users", json={"name": f"Writer {i}", "email": f"writer{i}@example.com", "age": i}
        ),
    )

    assert statuses(responses) == {201: 50}, [r.text for r in responses if r.status_code != 201]
    listed = client.get("/users", params={"limit": 500, "include_total": "true"})
    assert listed.json()["total"] == 50
    assert {user["email"] for user in listed.json()["items"]} == {
        f"writer{i}@example.com" for i in range(50)
    }


def test_racing_patches_with_same_if_match_let_exactly_one_win(client: TestClient) -> None:
    created = client.post("/users", json={"name": "Origin", "email": "o@example.com", "age": 1})
    assert created.status_code == 201
    location = created.headers["location"]

    responses = race(
        20,
        lambda i: client.patch(
            location, json={"name": f"Patcher {i}"}, headers={"If-Match": '"1"'}
        ),
    )

    assert statuses(responses) == {200: 1, 412: 19}, [r.text for r in responses]
    for response in responses:
        if response.status_code == 412:
            assert_problem(response, 412, "version_mismatch")
    [winner] = [r for r in responses if r.status_code == 200]
    assert winner.json()["version"] == 2
    assert winner.headers["etag"] == '"2"'
    final = client.get(location)
    assert final.json() == winner.json()
    assert final.headers["etag"] == '"2"'


def test_racing_patches_without_if_match_each_make_their_own_version(client: TestClient) -> None:
    created = client.post("/users", json={"name": "Origin", "email": "lost@example.com", "age": 1})
    assert created.status_code == 201
    location = created.headers["location"]

    responses = race(20, lambda i: client.patch(location, json={"name": f"Patcher {i}"}))

    # None is lost: each PATCH made a version of its own, with its own name,
    # and the change log holds each of them once, in version order.
    assert statuses(responses) == {200: 20}, [r.text for r in responses]
    made = {r.json()["version"]: r.json()["name"] for r in responses}
    assert sorted(made) == list(range(2, 22))
    assert sorted(made.values()) == sorted(f"Patcher {i}" for i in range(20))
    final = client.get(location).json()
    assert final["version"] == 21
    assert final["name"] == made[21]
    history = client.get(f"{location}/history", params={"limit": 100}).json()["items"]
    updates = [item for item in reversed(history) if item["action"] == "updated"]
    assert [item["version"] for item in updates] == list(range(2, 22))
    assert [item["user"]["name"] for item in updates] == [made[v] for v in range(2, 22)]
