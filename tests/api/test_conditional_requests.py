import pytest

from tests.helpers import assert_problem, create_user

UNKNOWN_ID = "6f1c2a8e-4b7d-4e2a-9c3f-0d5e8a7b1c2d"
WRITE_METHODS = ["PUT", "PATCH", "DELETE"]


def user_at_version_2(client):
    """A user that has been changed once: its current ETag is "2"."""
    created = create_user(client, name="Ada", email="ada@example.com", age=36)
    response = client.patch(f"/users/{created['id']}", json={"age": 37})
    assert response.json()["version"] == 2
    return response.json()


def write(client, method, user_id, if_match=None):
    headers = {} if if_match is None else {"If-Match": if_match}
    body = {
        "PUT": {"name": "Grace", "email": "grace@example.com", "age": 85},
        "PATCH": {"name": "Grace"},
        "DELETE": None,
    }[method]
    return client.request(method, f"/users/{user_id}", json=body, headers=headers)


def assert_written(client, method, response, user_id):
    if method == "DELETE":
        assert response.status_code == 204, response.text
        assert client.get(f"/users/{user_id}").status_code == 404
    else:
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "Grace"
        assert response.json()["version"] == 3
        assert response.headers["etag"] == '"3"'
        assert client.get(f"/users/{user_id}").json() == response.json()


# If-None-Match on GET


@pytest.mark.parametrize(
    "if_none_match",
    ['"2"', 'W/"2"', "*", '"5", "2"', ' "2" ', '"1", W/"2"'],
    ids=["current", "weak-current", "star", "list", "padded", "list-with-weak"],
)
def test_get_with_a_matching_if_none_match_is_304_with_etag_and_no_body(client, if_none_match):
    user = user_at_version_2(client)

    response = client.get(f"/users/{user['id']}", headers={"If-None-Match": if_none_match})

    assert response.status_code == 304
    assert response.headers["etag"] == '"2"'
    assert response.content == b""


@pytest.mark.parametrize(
    "if_none_match",
    ['"1"', 'W/"1"', '"3"', '"1", "3"', "2", '"02"', '"abc"'],
    ids=["old", "weak-old", "future", "list-without-current", "unquoted", "leading-zero", "text"],
)
def test_get_with_a_non_matching_if_none_match_is_200_with_the_user(client, if_none_match):
    user = user_at_version_2(client)

    response = client.get(f"/users/{user['id']}", headers={"If-None-Match": if_none_match})

    assert response.status_code == 200
    assert response.json() == user
    assert response.headers["etag"] == '"2"'


@pytest.mark.parametrize("if_none_match", ['"1"', "*"])
def test_get_unknown_user_with_if_none_match_is_404(client, if_none_match):
    response = client.get(f"/users/{UNKNOWN_ID}", headers={"If-None-Match": if_none_match})

    assert_problem(response, 404, "user_not_found")


def test_etag_follows_the_version_after_each_change(client):
    created = create_user(client, age=1)
    etags = []
    for age in (2, 3):
        client.patch(f"/users/{created['id']}", json={"age": age})
        etags.append(client.get(f"/users/{created['id']}").headers["etag"])

    assert etags == ['"2"', '"3"']


# If-Match on PUT, PATCH and DELETE


@pytest.mark.parametrize("method", WRITE_METHODS)
@pytest.mark.parametrize(
    "if_match",
    ['"2"', "*", '"5", "2"', '"2","5"', ' "2" ', 'W/"5", "2"'],
    ids=["current", "star", "list-last", "list-first-no-space", "padded", "weak-and-strong"],
)
def test_matching_if_match_lets_the_write_through(client, method, if_match):
    user = user_at_version_2(client)

    response = write(client, method, user["id"], if_match)

    assert_written(client, method, response, user["id"])


@pytest.mark.parametrize("method", WRITE_METHODS)
@pytest.mark.parametrize(
    "if_match",
    ['"1"', '"3"', '"1", "3"', 'W/"2"', "2", '"abc"', '"02"', '""', 'w/"2"', '"2'],
    ids=[
        "stale",
        "future",
        "list-without-current",
        "weak-current",
        "unquoted",
        "text",
        "leading-zero",
        "empty-tag",
        "lower-case-weak",
        "unterminated",
    ],
)
def test_non_matching_if_match_is_412_version_mismatch_and_writes_nothing(client, method, if_match):
    user = user_at_version_2(client)

    response = write(client, method, user["id"], if_match)

    assert_problem(response, 412, "version_mismatch")
    current = client.get(f"/users/{user['id']}")
    assert current.status_code == 200
    assert current.json() == user


def test_stale_if_match_on_patch_is_412_and_writes_nothing(client):
    user = user_at_version_2(client)

    response = client.patch(f"/users/{user['id']}", json={"age": 99}, headers={"If-Match": '"1"'})

    assert_problem(response, 412, "version_mismatch")
    assert client.get(f"/users/{user['id']}").json() == user


def test_weak_tag_of_the_current_version_never_matches_if_match(client):
    created = create_user(client)

    response = client.patch(
        f"/users/{created['id']}", json={"age": 99}, headers={"If-Match": 'W/"1"'}
    )

    assert_problem(response, 412, "version_mismatch")
    assert client.get(f"/users/{created['id']}").json() == created


@pytest.mark.parametrize("method", WRITE_METHODS)
@pytest.mark.parametrize("if_match", [None, '"1"', "*", 'W/"1"', "garbage"])
def test_unknown_user_is_404_whatever_if_match_says(client, method, if_match):
    create_user(client)

    response = write(client, method, UNKNOWN_ID, if_match)

    assert_problem(response, 404, "user_not_found")


@pytest.mark.parametrize("method", WRITE_METHODS)
def test_if_match_star_on_a_deleted_user_is_404(client, method):
    user = create_user(client)
    client.delete(f"/users/{user['id']}")

    response = write(client, method, user["id"], "*")

    assert_problem(response, 404, "user_not_found")


def test_an_etag_from_a_write_can_be_used_for_the_next_write(client):
    created = create_user(client, age=1)
    etag = client.get(f"/users/{created['id']}").headers["etag"]

    for age in (2, 3, 4):
        response = client.patch(
            f"/users/{created['id']}", json={"age": age}, headers={"If-Match": etag}
        )
        assert response.status_code == 200
        etag = response.headers["etag"]

    assert etag == '"4"'
    assert client.get(f"/users/{created['id']}").json()["age"] == 4


def test_second_writer_with_the_same_if_match_loses(client):
    user = create_user(client, age=1)
    headers = {"If-Match": '"1"'}

    first = client.patch(f"/users/{user['id']}", json={"age": 2}, headers=headers)
    second = client.patch(f"/users/{user['id']}", json={"age": 3}, headers=headers)

    assert first.status_code == 200
    assert_problem(second, 412, "version_mismatch")
    assert client.get(f"/users/{user['id']}").json() == first.json()


def test_if_match_on_a_write_that_changes_nothing_is_200_and_keeps_the_version(client):
    user = create_user(client, age=1)

    response = client.patch(f"/users/{user['id']}", json={"age": 1}, headers={"If-Match": '"1"'})

    assert response.status_code == 200
    assert response.json() == user
    assert response.headers["etag"] == '"1"'


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_without_if_match_the_last_writer_wins(client, method):
    user = user_at_version_2(client)
    bodies: dict[str, list[dict[str, object]]] = {
        "PUT": [
            {"name": "First", "email": "first@example.com", "age": 1},
            {"name": "Second", "email": "second@example.com", "age": 2},
        ],
        "PATCH": [{"name": "First"}, {"name": "Second"}],
    }

    responses = [
        client.request(method, f"/users/{user['id']}", json=body) for body in bodies[method]
    ]

    assert [response.status_code for response in responses] == [200, 200]
    final = client.get(f"/users/{user['id']}").json()
    assert final["name"] == "Second"
    assert final["version"] == 4
    assert final == responses[1].json()


def test_delete_without_if_match_deletes_whatever_the_version(client):
    user = user_at_version_2(client)

    response = client.delete(f"/users/{user['id']}")

    assert response.status_code == 204
    assert client.get(f"/users/{user['id']}").status_code == 404
