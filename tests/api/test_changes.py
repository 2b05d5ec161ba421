"""The change log: GET /users/changes, GET /users/{id}/history, retention and erasure."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, update

from tests.helpers import ADA, READER, WRITER, assert_problem, create_ada, create_user
from users_service import changes
from users_service.models import user_changes
from users_service.seed import seed_users
from users_service.transfer import import_file


def drain(client: TestClient, cursor: str | None = None, **params: Any) -> tuple[list[Any], str]:
    """Every change after `cursor`, following next_cursor; and the last cursor."""
    items: list[Any] = []
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/users/changes", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        cursor = page["next_cursor"]
        assert isinstance(cursor, str)
        if not page["items"]:
            return items, cursor
        items += page["items"]


def test_every_write_appends_one_change_with_who_what_and_when(client: TestClient) -> None:
    ada = client.post("/users", json=ADA, headers={"X-Request-ID": "req-create"}).json()
    batch = client.post(
        "/users/batch",
        json={"users": [{"name": "B", "email": "b@example.com", "age": 1}]},
    ).json()["items"]
    client.patch(f"/users/{ada['id']}", json={"age": 37}, headers={"X-Request-ID": "req-patch"})
    client.patch(f"/users/{ada['id']}", json={"age": 37})  # changes nothing: no change
    client.put(f"/users/{ada['id']}", json={**ADA, "name": "Ada King", "age": 37})
    client.delete(f"/users/{ada['id']}")

    items, _ = drain(client)

    assert [(i["action"], i["user_id"], i["version"]) for i in items] == [
        ("created", ada["id"], 1),
        ("created", batch[0]["id"], 1),
        ("updated", ada["id"], 2),
        ("updated", ada["id"], 3),
        ("deleted", ada["id"], 4),
    ]
    assert [i["seq"] for i in items] == sorted(i["seq"] for i in items)
    created, _, patched, replaced, deleted = items
    assert created["changed"] == ["name", "email", "age"]
    assert created["request_id"] == "req-create"
    assert created["caller"] == "anonymous"
    assert patched["changed"] == ["age"]
    assert patched["request_id"] == "req-patch"
    assert replaced["changed"] == ["name"]
    assert deleted["changed"] == [] and deleted["user"] is None
    # The deleted user's earlier changes keep everything but the user.
    assert created["user"] is None and patched["user"] is None
    assert items[1]["user"] == batch[0]
    assert datetime.fromisoformat(patched["at"]) >= datetime.fromisoformat(created["at"])


def test_an_updates_change_holds_the_user_as_the_write_answered_it(client: TestClient) -> None:
    ada = create_ada(client)
    patched = client.patch(f"/users/{ada['id']}", json={"age": 37, "name": ADA["name"]})
    replaced = client.put(
        f"/users/{ada['id']}", json={**ADA, "email": "ada@king.example", "age": 37}
    )
    both = client.patch(f"/users/{ada['id']}", json={"name": "Ada King", "age": 38})
    assert [r.status_code for r in (patched, replaced, both)] == [200, 200, 200]

    items, _ = drain(client)

    updates = items[1:]
    assert [i["changed"] for i in updates] == [["age"], ["email"], ["name", "age"]]
    for item, response in zip(updates, (patched, replaced, both), strict=True):
        assert item["user"] == response.json()
        assert item["version"] == response.json()["version"]
        assert response.headers["ETag"] == f'"{item["version"]}"'
        assert item["at"] == response.json()["updated_at"]


def test_a_write_that_fails_appends_no_change(client: TestClient) -> None:
    create_ada(client)
    _, cursor = drain(client)

    taken = client.post(
        "/users/batch",
        json={"users": [{"name": "N", "email": "new@example.com", "age": 1}, ADA]},
    )
    assert_problem(taken, 409, "email_taken")
    other = create_user(client)
    assert client.patch(f"/users/{other['id']}", json={"email": ADA["email"]}).status_code == 409

    items, _ = drain(client, cursor)
    assert [(i["action"], i["user_id"]) for i in items] == [("created", other["id"])]


def test_next_cursor_is_always_present_and_resumes_exactly_after(client: TestClient) -> None:
    empty = client.get("/users/changes").json()
    assert empty["items"] == [] and isinstance(empty["next_cursor"], str)
    first = create_user(client)
    second = create_user(client)

    page = client.get("/users/changes", params={"cursor": empty["next_cursor"], "limit": 1}).json()
    assert [i["user_id"] for i in page["items"]] == [first["id"]]
    rest, cursor = drain(client, page["next_cursor"])
    assert [i["user_id"] for i in rest] == [second["id"]]
    again = client.get("/users/changes", params={"cursor": cursor}).json()
    assert again == {"items": [], "next_cursor": cursor}


def test_a_long_poll_answers_as_soon_as_a_change_commits(client: TestClient) -> None:
    _, cursor = drain(client)
    writer = threading.Timer(0.5, lambda: create_user(client))
    started = time.monotonic()
    writer.start()
    try:
        page = client.get("/users/changes", params={"cursor": cursor, "wait": 20}).json()
    finally:
        writer.join()
    elapsed = time.monotonic() - started

    assert len(page["items"]) == 1
    # Generous: the write comes after 0.5 s; a poll that ignored the commit
    # would take the whole 20 s.
    assert elapsed < 10, elapsed


def test_a_long_poll_with_nothing_new_answers_empty_when_the_time_is_up(
    client: TestClient,
) -> None:
    _, cursor = drain(client)
    started = time.monotonic()
    page = client.get("/users/changes", params={"cursor": cursor, "wait": 1}).json()
    elapsed = time.monotonic() - started

    assert page == {"items": [], "next_cursor": cursor}
    assert 0.9 < elapsed < 10, elapsed  # upper bound: a busy machine, not a hang


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"wait": -1},
        {"wait": 31},
        {"wait": "nan"},
        {"cursor": "made-up"},
        {"colour": "red"},
    ],
)
def test_bad_feed_parameters_are_422(client: TestClient, params: dict[str, Any]) -> None:
    assert_problem(client.get("/users/changes", params=params), 422, "validation_failed")


def test_a_history_cursor_is_not_a_feed_cursor(client: TestClient) -> None:
    ada = create_ada(client)
    for age in range(1, 4):
        client.patch(f"/users/{ada['id']}", json={"age": age})
    cursor = client.get(f"/users/{ada['id']}/history", params={"limit": 1}).json()["next_cursor"]

    response = client.get("/users/changes", params={"cursor": cursor})

    assert_problem(response, 422, "validation_failed")


def test_a_cursor_past_retention_is_410_cursor_expired(client: TestClient, app: FastAPI) -> None:
    _, old_cursor = drain(client)
    create_user(client)
    create_user(client)
    kept = create_user(client)
    with app.state.database.engine.begin() as connection:
        newest = connection.execute(select(user_changes.c.seq).order_by(user_changes.c.seq.desc()))
        newest_seq = newest.scalars().first()
        connection.execute(
            update(user_changes)
            .where(user_changes.c.seq < newest_seq)
            .values(at=datetime.now(UTC) - timedelta(days=8))
        )

    deleted = client.portal.call(  # type: ignore[union-attr]
        lambda: changes.prune(database=app.state.database, retention=timedelta(days=7))
    )

    assert deleted >= 2
    assert_problem(
        client.get("/users/changes", params={"cursor": old_cursor}), 410, "cursor_expired"
    )
    items, _ = drain(client)  # without a cursor: from the oldest kept
    assert [i["user_id"] for i in items] == [kept["id"]]


def test_history_lists_a_users_changes_newest_first_paged(client: TestClient) -> None:
    ada = create_ada(client)
    create_user(client)  # someone else's change is not in Ada's history
    for age in range(1, 6):
        client.patch(f"/users/{ada['id']}", json={"age": age})

    versions = []
    cursor = None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = client.get(f"/users/{ada['id']}/history", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        versions += [item["version"] for item in page["items"]]
        assert all(item["user_id"] == ada["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            assert "link" not in response.headers
            break
        assert 'rel="next"' in response.headers["link"]
    assert versions == [6, 5, 4, 3, 2, 1]


def test_history_of_an_unknown_user_is_404(client: TestClient) -> None:
    response = client.get("/users/5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10/history")
    assert_problem(response, 404, "user_not_found")


def test_a_deleted_users_history_stays_without_their_name_and_email(client: TestClient) -> None:
    ada = create_ada(client)
    client.patch(f"/users/{ada['id']}", json={"name": "Ada King"})
    assert client.delete(f"/users/{ada['id']}").status_code == 204

    items = client.get(f"/users/{ada['id']}/history").json()["items"]

    assert [(i["action"], i["version"], i["user"]) for i in items] == [
        ("deleted", 3, None),
        ("updated", 2, None),
        ("created", 1, None),
    ]


def test_deleting_a_user_leaves_their_email_in_no_table(client: TestClient, app: FastAPI) -> None:
    email = "erase.me@example.com"
    ada = client.post(
        "/users", json={**ADA, "email": email}, headers={"Idempotency-Key": "erase-1"}
    ).json()
    client.post(
        "/users/batch",
        json={"users": [{**ADA, "email": "other@example.com"}]},
        headers={"Idempotency-Key": "erase-2"},
    )
    client.patch(f"/users/{ada['id']}", json={"name": "Ada King"})
    assert client.delete(f"/users/{ada['id']}").status_code == 204

    engine = app.state.database.engine
    found = []
    with engine.connect() as connection:
        for table in inspect(engine).get_table_names():
            for row in connection.exec_driver_sql(f"SELECT * FROM {table}"):
                text = " ".join(
                    value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                    for value in row
                )
                if email in text or "Ada King" in text:
                    found.append(table)
    assert found == []
    # What is not the deleted user's stays.
    items, _ = drain(client)
    assert any(i["user"] and i["user"]["email"] == "other@example.com" for i in items)


def test_the_feed_needs_a_key_like_users_and_a_reader_may_follow_it(keyed: TestClient) -> None:
    assert_problem(keyed.get("/users/changes"), 401, "unauthorized")
    created = keyed.post("/users", json=ADA, headers=WRITER).json()

    page = keyed.get("/users/changes", headers=READER).json()

    assert [(i["caller"], i["user_id"]) for i in page["items"]] == [("writer", created["id"])]
    history = keyed.get(f"/users/{created['id']}/history", headers=READER)
    assert history.status_code == 200


def test_import_appends_a_created_change_per_imported_user_and_seed_none(
    client: TestClient, app: FastAPI, tmp_path: Path
) -> None:
    present = create_ada(client)
    _, cursor = drain(client)
    path = tmp_path / "users.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"name": "Imp One", "email": "imp1@example.com", "age": 1},
                {**ADA},  # already present: no change
                {"name": "Imp Two", "email": "imp2@example.com", "age": 2},
            ]
        )
        + "\n"
    )

    summary, _ = import_file(app.state.database.engine, path, progress=False)
    seed_users(app.state.database.engine, 5)

    assert summary.imported == 2
    items, _ = drain(client, cursor)
    assert [(i["action"], i["user"]["email"]) for i in items] == [
        ("created", "imp1@example.com"),
        ("created", "imp2@example.com"),
    ]
    assert {i["caller"] for i in items} == {"import"}
    assert len({i["request_id"] for i in items}) == 1
    assert items[0]["user_id"] != present["id"]
    assert datetime.fromisoformat(items[0]["at"]) > datetime.now(UTC) - timedelta(minutes=5)
