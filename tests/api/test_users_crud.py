import re
import uuid
from datetime import timedelta

import pytest

from tests.helpers import assert_problem, create_user, parse_timestamp

UTC_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|\+00:00)$")


def get_user(client, user_id):
    response = client.get(f"/users/{user_id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_create_returns_201_with_the_user_its_location_and_etag(client):
    response = client.post(
        "/users", json={"name": "Ada Lovelace", "email": "ada@example.com", "age": 36}
    )

    assert response.status_code == 201
    user = response.json()
    assert set(user) == {"id", "name", "email", "age", "created_at", "updated_at", "version"}
    assert (user["name"], user["email"], user["age"]) == ("Ada Lovelace", "ada@example.com", 36)
    assert user["version"] == 1
    assert response.headers["location"] == f"/users/{user['id']}"
    assert response.headers["etag"] == '"1"'


def test_created_id_is_a_lower_case_uuid4(client):
    ids = [create_user(client)["id"] for _ in range(5)]

    for user_id in ids:
        parsed = uuid.UUID(user_id)
        assert parsed.version == 4
        assert user_id == str(parsed)
    assert len(set(ids)) == len(ids)


def test_created_timestamps_are_utc_iso8601_and_equal(client):
    user = create_user(client)

    assert UTC_TIMESTAMP.match(user["created_at"]), user["created_at"]
    assert UTC_TIMESTAMP.match(user["updated_at"]), user["updated_at"]
    assert parse_timestamp(user["created_at"]).utcoffset() == timedelta(0)
    assert user["created_at"] == user["updated_at"]


@pytest.mark.parametrize("email", ["ada@example.com", "ADA@Example.COM"])
def test_create_with_a_taken_email_is_409_and_creates_nothing(client, email):
    owner = create_user(client, email="ada@example.com")

    response = client.post("/users", json={"name": "Impostor", "email": email, "age": 20})

    assert_problem(response, 409, "email_taken")
    assert client.get("/users").json()["items"] == [owner]


def test_get_returns_the_created_user_with_its_etag(client):
    created = create_user(client)

    response = client.get(f"/users/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == '"1"'


def test_put_replaces_every_field_and_bumps_version_and_updated_at(client):
    created = create_user(client, name="Ada", email="ada@example.com", age=36)

    response = client.put(
        f"/users/{created['id']}",
        json={"name": "Grace Hopper", "email": "grace@example.com", "age": 85},
    )

    assert response.status_code == 200
    user = response.json()
    assert (user["name"], user["email"], user["age"]) == ("Grace Hopper", "grace@example.com", 85)
    assert user["id"] == created["id"]
    assert user["version"] == 2
    assert user["created_at"] == created["created_at"]
    assert parse_timestamp(user["updated_at"]) > parse_timestamp(created["updated_at"])
    assert UTC_TIMESTAMP.match(user["updated_at"])
    assert response.headers["etag"] == '"2"'
    assert get_user(client, created["id"]) == user


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Ada", "email": "ada@example.com", "age": 36},
        {"name": "  Ada ", "email": "ADA@example.com", "age": 36},
    ],
    ids=["identical", "identical-after-normalization"],
)
def test_put_with_identical_values_keeps_version_and_updated_at(client, body):
    created = create_user(client, name="Ada", email="ada@example.com", age=36)

    response = client.put(f"/users/{created['id']}", json=body)

    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == '"1"'
    assert get_user(client, created["id"]) == created


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"name": "Grace"}, {"name": "Grace"}),
        ({"email": "grace@example.com"}, {"email": "grace@example.com"}),
        ({"age": 85}, {"age": 85}),
        ({"name": "Grace", "age": 85}, {"name": "Grace", "age": 85}),
    ],
)
def test_patch_changes_only_the_fields_sent(client, change, expected):
    created = create_user(client, name="Ada", email="ada@example.com", age=36)

    response = client.patch(f"/users/{created['id']}", json=change)

    assert response.status_code == 200
    user = response.json()
    unchanged = {key: created[key] for key in ("id", "name", "email", "age", "created_at")}
    assert user == {
        **unchanged,
        **expected,
        "version": 2,
        "updated_at": user["updated_at"],
    }
    assert parse_timestamp(user["updated_at"]) > parse_timestamp(created["updated_at"])
    assert response.headers["etag"] == '"2"'
    assert get_user(client, created["id"]) == user


@pytest.mark.parametrize(
    "change",
    [{}, {"name": "Ada"}, {"age": 36}, {"email": "ada@example.com"}, {"name": "Ada", "age": 36}],
    ids=["empty", "same-name", "same-age", "same-email", "same-name-and-age"],
)
def test_patch_that_changes_nothing_keeps_version_and_updated_at(client, change):
    created = create_user(client, name="Ada", email="ada@example.com", age=36)

    response = client.patch(f"/users/{created['id']}", json=change)

    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["etag"] == '"1"'
    assert get_user(client, created["id"]) == created


def test_every_change_bumps_the_version_by_one(client):
    created = create_user(client, age=1)

    versions = [
        client.patch(f"/users/{created['id']}", json={"age": age}).json()["version"]
        for age in range(2, 6)
    ]

    assert versions == [2, 3, 4, 5]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("email", ["taken@example.com", "TAKEN@Example.com"])
def test_writing_an_email_taken_by_another_user_is_409_and_changes_nothing(client, method, email):
    owner = create_user(client, email="taken@example.com")
    other = create_user(client, name="Other", email="other@example.com", age=40)
    body = {"email": email} if method == "PATCH" else {"name": "New", "email": email, "age": 41}

    response = client.request(method, f"/users/{other['id']}", json=body)

    assert_problem(response, 409, "email_taken")
    assert get_user(client, other["id"]) == other
    assert get_user(client, owner["id"]) == owner


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_changing_the_case_of_your_own_email_is_not_a_conflict(client, method):
    created = create_user(client, name="Ada", email="ada@example.com", age=36)
    body: dict[str, object] = {"email": "ADA@EXAMPLE.com"}
    if method == "PUT":
        body.update(name="Ada", age=36)

    response = client.request(method, f"/users/{created['id']}", json=body)

    assert response.status_code == 200
    assert response.json() == created


def test_after_a_conflict_the_user_can_still_be_updated(client):
    create_user(client, email="taken@example.com")
    other = create_user(client, email="other@example.com")
    client.patch(f"/users/{other['id']}", json={"email": "taken@example.com"})

    response = client.patch(f"/users/{other['id']}", json={"email": "free@example.com"})

    assert response.status_code == 200
    assert response.json()["email"] == "free@example.com"


def test_an_email_freed_by_an_update_can_be_reused(client):
    first = create_user(client, email="ada@example.com")
    client.patch(f"/users/{first['id']}", json={"email": "ada.l@example.com"})

    response = client.post("/users", json={"name": "New Ada", "email": "ada@example.com", "age": 1})

    assert response.status_code == 201


def test_delete_is_204_then_the_user_is_gone(client):
    created = create_user(client)
    kept = create_user(client)

    response = client.delete(f"/users/{created['id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert_problem(client.get(f"/users/{created['id']}"), 404, "user_not_found")
    assert get_user(client, kept["id"]) == kept


def test_deleting_twice_is_404_the_second_time(client):
    created = create_user(client)
    assert client.delete(f"/users/{created['id']}").status_code == 204

    response = client.delete(f"/users/{created['id']}")

    assert_problem(response, 404, "user_not_found")


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_writing_a_deleted_user_is_404(client, method):
    created = create_user(client)
    client.delete(f"/users/{created['id']}")

    response = client.request(
        method, f"/users/{created['id']}", json={"name": "Ada", "email": "a@example.com", "age": 1}
    )

    assert_problem(response, 404, "user_not_found")


def test_an_email_freed_by_a_delete_can_be_reused(client):
    created = create_user(client, email="ada@example.com")
    client.delete(f"/users/{created['id']}")

    response = client.post("/users", json={"name": "Ada", "email": "ada@example.com", "age": 1})

    assert response.status_code == 201
    assert response.json()["id"] != created["id"]
