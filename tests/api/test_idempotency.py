"""Idempotency-Key on POST /users and POST /users/batch: retries answer what the first did.

The `client` fixture empties `users` but not `idempotency_keys`, so every
test uses keys of its own (`new_key()`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import and_, func, insert, select, update

from tests.helpers import assert_problem, race, user_count
from users_service.api.auth import ANONYMOUS
from users_service.errors import IdempotencyKeyInUse
from users_service.idempotency import (
    Claim,
    StoredAnswer,
    claim,
    delete_expired,
    fingerprint,
    release,
    save_answer,
)
from users_service.main import create_app
from users_service.models import idempotency_key_users, idempotency_keys
from users_service.settings import load_settings

keys_table = idempotency_keys
links_table = idempotency_key_users

# How the service names the endpoint a key belongs to (users_service/api/routing.py).
CREATE_ENDPOINT = "POST /users"


def new_key() -> str:
    return f"test-{uuid.uuid4()}"


def user_body(email: str, name: str = "Ada Lovelace", age: int = 36) -> dict[str, Any]:
    return {"name": name, "email": email, "age": age}


def post_json(
    client: TestClient, path: str, content: bytes, key: str, **headers: str
) -> httpx.Response:
    response: httpx.Response = client.post(
        path,
        content=content,
        headers={"Content-Type": "application/json", "Idempotency-Key": key, **headers},
    )
    return response


def users_with_email(client: TestClient, email: str) -> list[dict[str, Any]]:
    response = client.get("/users", params={"email": email})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def assert_replay_of(replay: httpx.Response, first: httpx.Response) -> None:
    """`replay` is `first` again, byte for byte, marked as replayed."""
    assert replay.status_code == first.status_code, replay.text
    assert replay.content == first.content
    assert replay.headers["content-type"] == first.headers["content-type"]
    assert replay.headers.get("location") == first.headers.get("location")
    assert replay.headers.get("etag") == first.headers.get("etag")
    assert replay.headers.get("idempotency-replayed") == "true"


def assert_not_replayed(response: httpx.Response) -> None:
    assert response.headers.get("idempotency-replayed") is None


def stored_rows(engine: Any, key: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(keys_table).where(keys_table.c.key == key)))


def linked_users(engine: Any, key: str) -> set[uuid.UUID]:
    """The users the answer stored for `key` is linked to (idempotency_key_users)."""
    with engine.connect() as connection:
        rows = connection.execute(select(links_table.c.user_id).where(links_table.c.key == key))
        return {row.user_id for row in rows}


def orphan_links(engine: Any) -> int:
    """Links whose key is gone (the foreign key's cascade should leave none)."""
    key_columns = ("caller", "endpoint", "key")
    joined = links_table.outerjoin(
        keys_table, and_(*(links_table.c[name] == keys_table.c[name] for name in key_columns))
    )
    with engine.connect() as connection:
        statement = select(func.count()).select_from(joined).where(keys_table.c.key.is_(None))
        return int(connection.execute(statement).scalar_one())


# --- same key, same body --------------------------------------------------------------

FIRST_BODY = b'{"name": "Ada Lovelace", "email": "ada@example.com", "age": 36}'


@pytest.mark.parametrize(
    "retry_body",
    [
        pytest.param(FIRST_BODY, id="identical-bytes"),
        pytest.param(
            b'{"age": 36, "email": "ada@example.com", "name": "Ada Lovelace"}',
            id="keys-in-another-order",
        ),
        pytest.param(
            b'{\n  "name":"Ada Lovelace",\n\t"email" : "ada@example.com" ,"age":36 }\n',
            id="other-whitespace",
        ),
    ],
)
def test_retry_with_same_key_and_body_replays_first_201_and_creates_nothing(
    client: TestClient, retry_body: bytes
) -> None:
    key = new_key()
    first = post_json(client, "/users", FIRST_BODY, key, **{"X-Request-ID": "first-request"})
    assert first.status_code == 201, first.text
    assert_not_replayed(first)

    retry = post_json(client, "/users", retry_body, key, **{"X-Request-ID": "retry-request"})

    assert_replay_of(retry, first)
    assert retry.headers["location"] == f"/users/{first.json()['id']}"
    assert retry.headers["etag"] == '"1"'
    assert users_with_email(client, "ada@example.com") == [first.json()]
    assert user_count(client) == 1


@pytest.mark.parametrize(
    "other_body",
    [
        pytest.param(user_body("ada@example.com", name="Grace Hopper"), id="other-name"),
        pytest.param(user_body("grace@example.com"), id="other-email"),
        pytest.param(user_body("ada@example.com", age=37), id="other-age"),
        pytest.param({"name": "Ada Lovelace", "email": "ada@example.com"}, id="field-missing"),
    ],
)
def test_same_key_with_a_different_body_is_422_idempotency_key_reused(
    client: TestClient, other_body: dict[str, Any]
) -> None:
    key = new_key()
    first = post_json(client, "/users", FIRST_BODY, key)
    assert first.status_code == 201, first.text

    response = post_json(client, "/users", json.dumps(other_body).encode(), key)

    problem = assert_problem(response, 422, "idempotency_key_reused")
    assert problem["request_id"] == response.headers["x-request-id"]
    assert_not_replayed(response)
    assert users_with_email(client, "grace@example.com") == []
    assert user_count(client) == 1


# --- the answers that are not 201 are kept too ----------------------------------------


def test_a_409_email_taken_is_replayed_even_after_the_conflict_is_gone(
    client: TestClient,
) -> None:
    owner = client.post("/users", json=user_body("ada@example.com", name="Owner"))
    assert owner.status_code == 201
    key = new_key()
    first = post_json(client, "/users", FIRST_BODY, key, **{"X-Request-ID": "first-409"})
    assert_problem(first, 409, "email_taken")
    deleted = client.delete(owner.headers["location"])
    assert deleted.status_code == 204

    retry = post_json(client, "/users", FIRST_BODY, key, **{"X-Request-ID": "retry-409"})

    assert_replay_of(retry, first)
    assert retry.json()["request_id"] == "first-409"
    assert users_with_email(client, "ada@example.com") == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param(
            b'{"name": "Ada", "email": "ada@example.com", "age": "x"}',
            ["body", "age"],
            id="age-not-an-integer",
        ),
        pytest.param(
            b'{"name": "Ada", "emial": "ada@example.com", "age": 36}',
            ["body", "emial"],
            id="unknown-field",
        ),
        pytest.param(b'{"name": "Ada", "email": ', ["body"], id="malformed-json"),
    ],
)
def test_a_422_validation_failed_is_replayed(
    client: TestClient, body: bytes, loc: list[str]
) -> None:
    key = new_key()
    first = post_json(client, "/users", body, key, **{"X-Request-ID": "first-422"})
    problem = assert_problem(first, 422, "validation_failed")
    assert loc in [error["loc"] for error in problem["errors"]]

    retry = post_json(client, "/users", body, key, **{"X-Request-ID": "retry-422"})

    assert_replay_of(retry, first)
    assert retry.json()["request_id"] == "first-422"
    assert user_count(client) == 0


def test_a_422_is_kept_so_the_same_key_with_a_corrected_body_is_reused(
    client: TestClient,
) -> None:
    key = new_key()
    first = post_json(
        client, "/users", b'{"name": "Ada", "email": "ada@example.com", "age": "x"}', key
    )
    assert_problem(first, 422, "validation_failed")

    response = post_json(client, "/users", FIRST_BODY, key)

    assert_problem(response, 422, "idempotency_key_reused")
    assert user_count(client) == 0


def test_a_415_comes_before_the_endpoint_and_is_not_kept(client: TestClient) -> None:
    key = new_key()
    refused = client.post(
        "/users",
        content=FIRST_BODY,
        headers={"Content-Type": "text/plain", "Idempotency-Key": key},
    )
    assert_problem(refused, 415, "unsupported_media_type")

    response = post_json(client, "/users", FIRST_BODY, key)

    assert response.status_code == 201, response.text
    assert_not_replayed(response)
    assert user_count(client) == 1


# --- the key itself ----------------------------------------------------------------------


BATCH_BODY = b'{"users": [{"name": "Ada Lovelace", "email": "ada@example.com", "age": 36}]}'


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/users", FIRST_BODY, id="create"),
        pytest.param("/users/batch", BATCH_BODY, id="batch"),
    ],
)
@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("k" * 256, id="256-characters"),
        pytest.param("two words", id="space"),
        pytest.param("caf\u00e9", id="non-ascii"),
    ],
)
def test_malformed_key_is_422_validation_failed_and_not_stored(
    client: TestClient, app: FastAPI, key: str, path: str, body: bytes
) -> None:
    # httpx only sends str header values that are ASCII: send the key's bytes.
    response = client.post(
        path,
        content=body,
        headers={"Content-Type": "application/json", "Idempotency-Key": key.encode("latin-1")},
    )

    problem = assert_problem(response, 422, "validation_failed")
    assert ["header", "Idempotency-Key"] in [error["loc"] for error in problem["errors"]]
    assert user_count(client) == 0
    assert stored_rows(app.state.database.engine, key) == []
    later = post_json(client, path, body, new_key())
    assert later.status_code == 201, later.text
    assert_not_replayed(later)
    assert user_count(client) == 1


def test_keys_differing_in_letter_case_are_different_keys(client: TestClient) -> None:
    key = new_key()
    upper = post_json(client, "/users", FIRST_BODY, key.upper())
    assert upper.status_code == 201, upper.text

    lower = post_json(client, "/users", json.dumps(user_body("grace@example.com")).encode(), key)

    assert lower.status_code == 201, lower.text
    assert_not_replayed(lower)
    assert user_count(client) == 2


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("~", id="one-character"),
        pytest.param("!" + (uuid.uuid4().hex * 8)[:254], id="255-characters"),
        pytest.param('!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~' + uuid.uuid4().hex, id="punctuation"),
    ],
)
def test_well_formed_key_at_the_limits_is_accepted_and_replayed(
    client: TestClient, key: str
) -> None:
    first = post_json(client, "/users", FIRST_BODY, key)
    assert first.status_code == 201, first.text

    retry = post_json(client, "/users", FIRST_BODY, key)

    assert_replay_of(retry, first)
    assert user_count(client) == 1


# --- whose key: caller and endpoint --------------------------------------------------------


def test_same_key_on_create_and_batch_are_independent(client: TestClient) -> None:
    key = new_key()
    single = post_json(client, "/users", json.dumps(user_body("one@example.com")).encode(), key)
    assert single.status_code == 201, single.text
    batch_body = json.dumps({"users": [user_body("two@example.com")]}).encode()

    batch = post_json(client, "/users/batch", batch_body, key)

    assert batch.status_code == 201, batch.text
    assert_not_replayed(batch)
    assert [user["email"] for user in batch.json()["items"]] == ["two@example.com"]
    assert user_count(client) == 2
    assert_replay_of(
        post_json(client, "/users", json.dumps(user_body("one@example.com")).encode(), key),
        single,
    )
    assert_replay_of(post_json(client, "/users/batch", batch_body, key), batch)


@pytest.fixture
def two_callers(client: TestClient, database_url: str) -> Iterator[TestClient]:
    """An app with the API keys of callers alpha (key-a) and beta (key-b); users emptied."""
    app = create_app(
        load_settings(
            database_url=database_url, environment="test", api_keys="alpha:key-a,beta:key-b"
        )
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    app.state.database.engine.dispose()


ALPHA = {"Authorization": "Bearer key-a"}
BETA = {"Authorization": "Bearer key-b"}


def test_same_key_used_by_two_callers_creates_two_users(two_callers: TestClient) -> None:
    key = new_key()
    alpha_body = json.dumps(user_body("alpha@example.com")).encode()
    beta_body = json.dumps(user_body("beta@example.com")).encode()

    alpha = post_json(two_callers, "/users", alpha_body, key, **ALPHA)
    beta = post_json(two_callers, "/users", beta_body, key, **BETA)

    assert alpha.status_code == 201, alpha.text
    assert beta.status_code == 201, beta.text
    assert_not_replayed(beta)
    assert alpha.json()["id"] != beta.json()["id"]
    assert user_count(two_callers, **ALPHA) == 2
    assert_replay_of(post_json(two_callers, "/users", alpha_body, key, **ALPHA), alpha)
    assert_replay_of(post_json(two_callers, "/users", beta_body, key, **BETA), beta)


def test_another_callers_key_is_not_replayed_to_a_caller(two_callers: TestClient) -> None:
    key = new_key()
    alpha = post_json(two_callers, "/users", FIRST_BODY, key, **ALPHA)
    assert alpha.status_code == 201, alpha.text

    beta = post_json(two_callers, "/users", FIRST_BODY, key, **BETA)

    # Run anew for beta, not alpha's answer replayed: the email is now taken.
    assert_problem(beta, 409, "email_taken")
    assert_not_replayed(beta)
    assert user_count(two_callers, **ALPHA) == 1


# --- concurrent and abandoned requests --------------------------------------------------------


def test_ten_concurrent_requests_with_one_key_create_one_user(client: TestClient) -> None:
    key = new_key()

    responses = race(10, lambda _i: post_json(client, "/users", FIRST_BODY, key))

    assert all(r.status_code < 500 for r in responses), [r.text for r in responses]
    created = [r for r in responses if r.status_code == 201]
    originals = [r for r in created if r.headers.get("idempotency-replayed") is None]
    assert len(originals) == 1, [(r.status_code, dict(r.headers), r.text) for r in responses]
    [original] = originals
    for response in responses:
        if response is original:
            continue
        if response.status_code == 201:
            assert_replay_of(response, original)
        else:
            assert_problem(response, 409, "idempotency_key_in_use")
    assert users_with_email(client, "ada@example.com") == [original.json()]
    assert user_count(client) == 1


def insert_claim(
    app: FastAPI, key: str, request_body: bytes, age: timedelta, **answer: Any
) -> None:
    """A row as a request with `key` left it `age` ago (in flight unless `answer`)."""
    with app.state.database.engine.begin() as connection:
        connection.execute(
            insert(keys_table).values(
                caller=ANONYMOUS,
                endpoint=CREATE_ENDPOINT,
                key=key,
                request_hash=fingerprint(request_body),
                created_at=datetime.now(UTC) - age,
                **answer,
            )
        )


def test_claim_left_in_flight_by_a_dead_request_is_taken_over_by_a_retry(
    client: TestClient, app: FastAPI
) -> None:
    key = new_key()
    insert_claim(app, key, FIRST_BODY, timedelta(minutes=3))

    response = post_json(client, "/users", FIRST_BODY, key)

    assert response.status_code == 201, response.text
    assert_not_replayed(response)
    assert user_count(client) == 1
    [row] = stored_rows(app.state.database.engine, key)
    assert row.status == 201  # the abandoned claim itself was taken over and answered
    assert_replay_of(post_json(client, "/users", FIRST_BODY, key), response)


def test_claim_of_a_request_still_in_flight_is_409_idempotency_key_in_use(
    client: TestClient, app: FastAPI
) -> None:
    key = new_key()
    insert_claim(app, key, FIRST_BODY, timedelta(seconds=10))

    response = post_json(client, "/users", FIRST_BODY, key)

    problem = assert_problem(response, 409, "idempotency_key_in_use")
    assert problem["request_id"] == response.headers["x-request-id"]
    assert user_count(client) == 0
    [row] = stored_rows(app.state.database.engine, key)
    assert row.status is None


@pytest.mark.parametrize(
    ("age", "replayed"),
    [
        pytest.param(timedelta(hours=23), True, id="23-hours-old-replayed"),
        pytest.param(timedelta(hours=25), False, id="25-hours-old-runs-anew"),
    ],
)
def test_stored_answer_is_replayed_for_24_hours_only(
    client: TestClient, app: FastAPI, age: timedelta, replayed: bool
) -> None:
    key = new_key()
    first = post_json(client, "/users", FIRST_BODY, key)
    assert first.status_code == 201, first.text
    if not replayed:  # so that running anew can create the email again
        # (a delete also erases the stored answer: tests/api/test_changes.py)
        assert client.delete(first.headers["location"]).status_code == 204
    with app.state.database.engine.begin() as connection:
        connection.execute(
            update(keys_table)
            .where(keys_table.c.key == key)
            .values(created_at=datetime.now(UTC) - age)
        )

    retry = post_json(client, "/users", FIRST_BODY, key)

    if replayed:
        assert_replay_of(retry, first)
        assert user_count(client) == 1  # nothing created again
    else:
        assert retry.status_code == 201, retry.text
        assert_not_replayed(retry)
        assert retry.json()["id"] != first.json()["id"]
        assert users_with_email(client, "ada@example.com") == [retry.json()]


def test_expired_key_may_be_used_with_another_body(client: TestClient, app: FastAPI) -> None:
    key = new_key()
    first = post_json(client, "/users", FIRST_BODY, key)
    assert first.status_code == 201, first.text
    with app.state.database.engine.begin() as connection:
        connection.execute(
            update(keys_table)
            .where(keys_table.c.key == key)
            .values(created_at=datetime.now(UTC) - timedelta(hours=25))
        )

    response = post_json(client, "/users", json.dumps(user_body("grace@example.com")).encode(), key)

    assert response.status_code == 201, response.text
    assert_not_replayed(response)
    assert user_count(client) == 2


def test_delete_expired_removes_keys_older_than_24_hours_and_keeps_newer(
    client: TestClient, app: FastAPI
) -> None:
    ages = {
        "old": timedelta(hours=25),
        "just-expired": timedelta(hours=24, minutes=1),
        "nearly-expired": timedelta(hours=23, minutes=59),
        "fresh": timedelta(minutes=1),
    }
    keys = {name: new_key() for name in ages}
    for name, age in ages.items():
        insert_claim(app, keys[name], FIRST_BODY, age, status=201, headers="{}", body=b"{}")
    engine = app.state.database.engine
    cutoff = datetime.now(UTC) - timedelta(hours=24)
    with engine.connect() as connection:
        expired_before = connection.execute(
            select(func.count()).select_from(keys_table).where(keys_table.c.created_at < cutoff)
        ).scalar_one()

    assert client.portal is not None
    deleted = client.portal.call(partial(delete_expired, database=app.state.database))

    assert deleted == expired_before >= 2
    assert stored_rows(engine, keys["old"]) == []
    assert stored_rows(engine, keys["just-expired"]) == []
    assert len(stored_rows(engine, keys["nearly-expired"])) == 1
    assert len(stored_rows(engine, keys["fresh"])) == 1


def claim_directly(client: TestClient, app: FastAPI, key: str) -> Claim:
    """Claim `key` for FIRST_BODY as a request would, outside any request."""
    assert client.portal is not None
    claimed = client.portal.call(
        partial(
            claim,
            database=app.state.database,
            caller=ANONYMOUS,
            endpoint=CREATE_ENDPOINT,
            key=key,
            request_hash=fingerprint(FIRST_BODY),
        )
    )
    assert isinstance(claimed, Claim)
    return claimed


def test_release_frees_the_requests_own_claim_and_never_a_later_one(
    client: TestClient, app: FastAPI
) -> None:
    database = app.state.database
    portal = client.portal
    assert portal is not None

    released_key, kept_key = new_key(), new_key()
    released = claim_directly(client, app, released_key)
    portal.call(partial(release, database=database, claimed=released))
    # A later request's claim of the same key (here: one that took over a
    # claim its request never finished) survives the earlier one's release.
    earlier = claim_directly(client, app, kept_key)
    later = replace(earlier, claimed_at=earlier.claimed_at + timedelta(minutes=3))
    with database.engine.begin() as connection:
        connection.execute(
            update(keys_table)
            .where(keys_table.c.key == kept_key)
            .values(created_at=later.claimed_at)
        )
    portal.call(partial(release, database=database, claimed=earlier))

    assert stored_rows(database.engine, released_key) == []
    assert len(stored_rows(database.engine, kept_key)) == 1


def test_a_request_whose_claim_was_taken_over_can_store_nothing(
    client: TestClient, app: FastAPI
) -> None:
    database = app.state.database
    portal = client.portal
    assert portal is not None
    key = new_key()
    first = claim_directly(client, app, key)
    # Its request looks dead (no answer for longer than the in-flight
    # timeout): a retry takes the key over and creates the user.
    with database.engine.begin() as connection:
        connection.execute(
            update(keys_table)
            .where(keys_table.c.key == key)
            .values(created_at=datetime.now(UTC) - timedelta(minutes=3))
        )
    retried = post_json(client, "/users", FIRST_BODY, key)
    assert retried.status_code == 201, retried.text

    async def late_answer() -> None:
        async with database.transaction() as connection:
            await save_answer(
                connection=connection,
                claimed=first,
                answer=StoredAnswer(201, {}, b"{}"),
                shows=[uuid.uuid4(), uuid.uuid4()],
            )

    with pytest.raises(IdempotencyKeyInUse):
        portal.call(late_answer)
    assert_replay_of(post_json(client, "/users", FIRST_BODY, key), retried)
    assert user_count(client) == 1
    assert linked_users(database.engine, key) == {uuid.UUID(retried.json()["id"])}


# --- batch -------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 1000])
def test_batch_retry_replays_every_item_and_creates_nothing_more(
    client: TestClient, count: int
) -> None:
    key = new_key()
    body = {"users": [user_body(f"batch{i}@example.com", name=f"Batch {i}") for i in range(count)]}
    first = post_json(client, "/users/batch", json.dumps(body).encode(), key)
    assert first.status_code == 201, first.text
    assert len(first.json()["items"]) == count

    retry = post_json(client, "/users/batch", json.dumps(body, indent=2).encode(), key)

    assert_replay_of(retry, first)
    assert user_count(client) == count


# --- erasure -------------------------------------------------------------------------------


def test_a_delete_erases_the_answers_that_show_the_user_found_by_their_links(
    client: TestClient, app: FastAPI
) -> None:
    engine = app.state.database.engine
    single_key, batch_key, other_key = new_key(), new_key(), new_key()
    ada = post_json(client, "/users", json.dumps(user_body("ada@example.com")).encode(), single_key)
    batch_body = {"users": [user_body("b@example.com", "Bea"), user_body("c@example.com", "Cy")]}
    batch = post_json(client, "/users/batch", json.dumps(batch_body).encode(), batch_key)
    other_body = json.dumps(user_body("d@example.com", "Dee")).encode()
    other = post_json(client, "/users", other_body, other_key)
    bea, cy = (uuid.UUID(item["id"]) for item in batch.json()["items"])
    assert linked_users(engine, single_key) == {uuid.UUID(ada.json()["id"])}
    assert linked_users(engine, batch_key) == {bea, cy}

    assert client.delete(f"/users/{bea}").status_code == 204

    # The batch's answer showed Bea: gone, with its links.
    assert stored_rows(engine, batch_key) == []
    assert linked_users(engine, batch_key) == set()
    # What did not show her stays, and is still replayed.
    assert len(stored_rows(engine, single_key)) == 1
    assert_replay_of(post_json(client, "/users", other_body, other_key), other)
    assert linked_users(engine, other_key) == {uuid.UUID(other.json()["id"])}
    # A retry of the batch runs anew (docs/api.md, Erasure): Cy still exists.
    retry = post_json(client, "/users/batch", json.dumps(batch_body).encode(), batch_key)
    assert_problem(retry, 409, "email_taken")
    assert_not_replayed(retry)
    assert orphan_links(engine) == 0


def test_an_expired_answer_taken_over_by_a_new_request_keeps_none_of_its_links(
    client: TestClient, app: FastAPI
) -> None:
    engine = app.state.database.engine
    key = new_key()
    first = post_json(client, "/users", FIRST_BODY, key)
    with engine.begin() as connection:
        connection.execute(
            update(keys_table)
            .where(keys_table.c.key == key)
            .values(created_at=datetime.now(UTC) - timedelta(hours=25))
        )
    second = post_json(client, "/users", json.dumps(user_body("grace@example.com")).encode(), key)
    assert second.status_code == 201, second.text

    assert linked_users(engine, key) == {uuid.UUID(second.json()["id"])}
    # Deleting the first user leaves the answer that shows the second one.
    assert client.delete(first.headers["location"]).status_code == 204
    assert len(stored_rows(engine, key)) == 1


@pytest.mark.parametrize("batch", [1, 1000])
def test_the_sweep_deletes_the_links_of_the_keys_it_deletes(
    client: TestClient, app: FastAPI, batch: int
) -> None:
    engine = app.state.database.engine
    expired, kept = new_key(), new_key()
    body = {"users": [user_body(f"sweep{i}@example.com") for i in range(3)]}
    post_json(client, "/users/batch", json.dumps(body).encode(), expired)
    post_json(client, "/users", json.dumps(user_body("s@example.com")).encode(), expired + "-1")
    post_json(client, "/users", json.dumps(user_body("k@example.com")).encode(), kept)
    with engine.begin() as connection:
        connection.execute(
            update(keys_table)
            .where(keys_table.c.key.in_([expired, expired + "-1"]))
            .values(created_at=datetime.now(UTC) - timedelta(hours=25))
        )
    assert len(linked_users(engine, expired)) == 3

    assert client.portal is not None
    deleted = client.portal.call(partial(delete_expired, database=app.state.database, batch=batch))

    assert deleted >= 2
    assert linked_users(engine, expired) == set()
    assert linked_users(engine, expired + "-1") == set()
    assert len(linked_users(engine, kept)) == 1
    assert orphan_links(engine) == 0


def test_deletes_racing_keyed_creates_never_deadlock_them(client: TestClient) -> None:
    """A delete erases answers after taking the change log's order lock: on
    MariaDB its look-up in the links locks a gap where a racing keyed create,
    holding that lock, may insert its link (2-4 of these 600 creates were
    503 before, with the look-up first)."""
    created = [
        post_json(
            client, "/users", json.dumps(user_body(f"race{n}@example.com")).encode(), new_key()
        )
        for n in range(300)
    ]
    ids = [response.json()["id"] for response in created]

    def work(worker: int) -> list[int]:
        if worker < 4:
            return [client.delete(f"/users/{user_id}").status_code for user_id in ids[worker::4]]
        return [
            post_json(
                client,
                "/users",
                json.dumps(user_body(f"new{worker}-{n}@example.com")).encode(),
                new_key(),
            ).status_code
            for n in range(150)
        ]

    statuses = race(8, work)

    assert [set(found) for found in statuses] == [{204}] * 4 + [{201}] * 4
