"""POST /users/batch: 1-1000 users, all or nothing, in the order sent."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers import assert_problem, create_user, user_count

BATCH_SECONDS_LIMIT = 1.0
TIMED_BACKENDS = ("sqlite", "postgresql")


def batch_of(count: int, prefix: str = "batch") -> list[dict[str, Any]]:
    return [
        {"name": f"{prefix.title()} {i:04d}", "email": f"{prefix}{i}@example.com", "age": i % 151}
        for i in range(count)
    ]


def list_all(client: TestClient) -> list[dict[str, Any]]:
    """Every user, by created_at (the default sort), following next_cursor."""
    users: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    while True:
        response = client.get("/users", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        users.extend(page["items"])
        if page["next_cursor"] is None:
            return users
        params = {"limit": 500, "cursor": page["next_cursor"]}


@pytest.mark.parametrize("count", [1, 1000])
def test_batch_creates_every_user_in_the_order_sent(client: TestClient, count: int) -> None:
    sent = batch_of(count)

    response = client.post("/users/batch", json={"users": sent})

    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert set(response.json()) == {"items"}
    assert [(u["name"], u["email"], u["age"]) for u in items] == [
        (u["name"], u["email"], u["age"]) for u in sent
    ]
    assert all(user["version"] == 1 for user in items)
    assert len({user["id"] for user in items}) == count
    for user in items:
        fetched = client.get(f"/users/{user['id']}")
        assert fetched.status_code == 200, fetched.text
        assert fetched.json() == user
    assert user_count(client) == count


def test_batch_users_list_by_created_at_in_the_order_sent(client: TestClient) -> None:
    before = create_user(client)
    # Names sorted the other way from the order sent, so that a listing that
    # fell back on another order would show it.
    sent = [
        {"name": f"Reverse {999 - i:04d}", "email": f"order{i}@example.com", "age": 30}
        for i in range(1000)
    ]
    response = client.post("/users/batch", json={"users": sent})
    assert response.status_code == 201, response.text

    listed = list_all(client)

    assert [user["id"] for user in listed] == [
        before["id"],
        *(user["id"] for user in response.json()["items"]),
    ]
    assert [user["email"] for user in listed[1:]] == [user["email"] for user in sent]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param({"users": []}, ["body", "users"], id="no-users"),
        pytest.param({"users": batch_of(1001)}, ["body", "users"], id="1001-users"),
        pytest.param({}, ["body", "users"], id="users-missing"),
        pytest.param({"users": batch_of(1)[0]}, ["body", "users"], id="users-not-a-list"),
        pytest.param({"users": batch_of(2), "extra": 1}, ["body", "extra"], id="unknown-top-field"),
    ],
)
def test_batch_body_of_the_wrong_shape_is_422_and_creates_nothing(
    client: TestClient, body: dict[str, Any], loc: list[str]
) -> None:
    create_user(client)

    response = client.post("/users/batch", json=body)

    problem = assert_problem(response, 422, "validation_failed")
    assert [error["loc"] for error in problem["errors"]] == [loc]
    assert user_count(client) == 1


def with_item(index: int, **changes: Any) -> list[dict[str, Any]]:
    """A batch of five valid users whose item `index` is changed (None removes a field)."""
    users = batch_of(5)
    for field, value in changes.items():
        if value is None:
            del users[index][field]
        else:
            users[index][field] = value
    return users


@pytest.mark.parametrize(
    ("users", "loc"),
    [
        pytest.param(with_item(0, name=None), ["body", "users", 0, "name"], id="missing-name"),
        pytest.param(with_item(1, age=151), ["body", "users", 1, "age"], id="age-too-high"),
        pytest.param(with_item(3, age="x"), ["body", "users", 3, "age"], id="age-a-string"),
        pytest.param(with_item(2, name="  "), ["body", "users", 2, "name"], id="blank-name"),
        pytest.param(
            with_item(4, email="not-an-email"), ["body", "users", 4, "email"], id="bad-email"
        ),
        pytest.param(
            with_item(2, emial="x@example.com"), ["body", "users", 2, "emial"], id="unknown-field"
        ),
        pytest.param(with_item(3, id="x"), ["body", "users", 3, "id"], id="id-given"),
    ],
)
def test_batch_with_an_invalid_item_is_422_naming_it_and_creates_nothing(
    client: TestClient, users: list[dict[str, Any]], loc: list[str | int]
) -> None:
    create_user(client)

    response = client.post("/users/batch", json={"users": users})

    problem = assert_problem(response, 422, "validation_failed")
    assert [error["loc"] for error in problem["errors"]] == [loc]
    assert user_count(client) == 1


@pytest.mark.parametrize(
    ("field", "raw_value"),
    [
        ("name", r'"\ud800"'),
        ("name", r'"\ude00\ud83d"'),
        ("email", r'"batch\ud800@example.com"'),
        ("email", r'"\ude00\ud83dbatch@example.com"'),
    ],
    ids=["name-high", "name-low-before-high", "email-high", "email-low-before-high"],
)
def test_batch_item_with_lone_surrogate_is_422_naming_its_field_and_creates_nothing(
    client: TestClient, field: str, raw_value: str
) -> None:
    # Sent as JSON escapes (valid JSON syntax): the item's field is refused.
    users = batch_of(3)
    text = json.dumps({"users": users}).replace(json.dumps(users[1][field]), raw_value)

    response = client.post(
        "/users/batch", content=text.encode(), headers={"Content-Type": "application/json"}
    )

    problem = assert_problem(response, 422, "validation_failed")
    assert [error["loc"] for error in problem["errors"]] == [["body", "users", 1, field]]
    assert user_count(client) == 0


@pytest.mark.parametrize(
    ("first", "later", "first_email", "later_email"),
    [
        pytest.param(1, 3, "twin@example.com", "twin@example.com", id="same-email"),
        pytest.param(0, 4, "twin@example.com", "TWIN@Example.COM", id="differs-in-case"),
        pytest.param(2, 3, "Twin@example.com", "twin@example.com", id="adjacent"),
    ],
)
def test_same_email_twice_in_a_batch_is_409_naming_the_later_item(
    client: TestClient, first: int, later: int, first_email: str, later_email: str
) -> None:
    create_user(client)
    users = batch_of(5)
    users[first]["email"] = first_email
    users[later]["email"] = later_email

    response = client.post("/users/batch", json={"users": users})

    problem = assert_problem(response, 409, "email_taken")
    assert [error["loc"] for error in problem["errors"]] == [["body", "users", later, "email"]]
    assert user_count(client) == 1


@pytest.mark.parametrize(
    ("index", "email"),
    [
        pytest.param(0, "taken@example.com", id="first-item"),
        pytest.param(2, "taken@example.com", id="middle-item"),
        pytest.param(4, "TAKEN@example.com", id="last-item-other-case"),
    ],
)
def test_email_already_taken_is_409_naming_the_item_and_creates_nothing(
    client: TestClient, index: int, email: str
) -> None:
    owner = create_user(client, email="taken@example.com")
    users = batch_of(5)
    users[index]["email"] = email

    response = client.post("/users/batch", json={"users": users})

    problem = assert_problem(response, 409, "email_taken")
    assert [error["loc"] for error in problem["errors"]] == [["body", "users", index, "email"]]
    assert list_all(client) == [owner]


def test_batch_of_1000_takes_under_a_second(client: TestClient, backend: str) -> None:
    warm_up = client.post("/users/batch", json={"users": batch_of(1000, "warmup")})
    assert warm_up.status_code == 201, warm_up.text
    body = {"users": batch_of(1000, "timed")}

    started = time.perf_counter()
    response = client.post("/users/batch", json=body)
    elapsed = time.perf_counter() - started

    print(f"\n[{backend}] POST /users/batch of 1000 users: {elapsed * 1000:.0f} ms")
    assert response.status_code == 201, response.text
    assert len(response.json()["items"]) == 1000
    if backend in TIMED_BACKENDS:
        assert elapsed < BATCH_SECONDS_LIMIT
