"""What one caller may keep of Idempotency-Keys is bounded (issue 17, finding 3).

Before: 300 `POST /users/batch` of 1000 empty users, each with a new key,
stored a 227 KB 422 apiece (68 MB in 4.3 s, no user created), and nothing
stopped a caller from storing more. Now a caller keeps at most
IDEMPOTENCY_MAX_KEYS_PER_CALLER keys and IDEMPOTENCY_MAX_BYTES_PER_CALLER
bytes of answers (a new key past either: 429 `idempotency_quota_exceeded`),
and a 4xx answer over IDEMPOTENCY_MAX_ERROR_ANSWER_BYTES is not kept.

Each test has callers of its own (the shared database keeps other tests' keys).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, update

from tests.helpers import assert_problem, user_count
from users_service.idempotency import StoredAnswer, fingerprint, sweep_once
from users_service.main import create_app
from users_service.models import idempotency_keys
from users_service.settings import load_settings


@contextmanager
def app_client(
    database_url: str, tag: str | None = None, **settings: Any
) -> Iterator[tuple[TestClient, str, str]]:
    """A client on an app with `settings` and two callers of this test's own
    (`tag` names them): (client, alpha's caller name, beta's caller name)."""
    tag = tag or uuid.uuid4().hex[:12]
    alpha, beta = f"alpha-{tag}", f"beta-{tag}"
    app = create_app(
        load_settings(
            database_url=database_url,
            environment="test",
            log_level="WARNING",
            api_keys=f"{alpha}:key-a-{tag},{beta}:key-b-{tag}",
            **settings,
        )
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = f"Bearer key-a-{tag}"
        yield test_client, alpha, beta
    app.state.database.engine.dispose()


def as_caller(client: TestClient, caller: str) -> dict[str, str]:
    """The Authorization header of `caller` (alpha-... or beta-...)."""
    tag = caller.split("-", 1)[1]
    return {"Authorization": f"Bearer key-{caller[0]}-{tag}"}


def post(
    client: TestClient, path: str, body: Any, key: str | None, **headers: str
) -> httpx.Response:
    if key is not None:
        headers["Idempotency-Key"] = key
    response: httpx.Response = client.post(path, json=body, headers=headers)
    return response


def user(number: int) -> dict[str, Any]:
    return {
        "name": f"User {number}",
        "email": f"u{number}-{uuid.uuid4().hex}@example.com",
        "age": 30,
    }


def stored(client: TestClient, caller: str) -> list[Any]:
    engine = client.app.state.database.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(
                    idempotency_keys.c.key, idempotency_keys.c.status, idempotency_keys.c.body
                ).where(idempotency_keys.c.caller == caller)
            )
        )


def assert_quota_problem(response: httpx.Response) -> None:
    problem = assert_problem(response, 429, "idempotency_quota_exceeded")
    assert response.headers["retry-after"] == "60"
    assert problem["request_id"] == response.headers["x-request-id"]
    assert response.headers.get("idempotency-replayed") is None


# --- the caps ------------------------------------------------------------------------------------


def test_a_new_key_past_the_callers_key_cap_is_429_while_its_stored_keys_still_replay(
    database_url: str,
) -> None:
    tag = uuid.uuid4().hex[:12]
    with app_client(database_url, tag, idempotency_max_keys_per_caller=3) as (client, alpha, beta):
        bodies = [user(number) for number in range(3)]
        firsts = [post(client, "/users", body, f"k{n}") for n, body in enumerate(bodies)]
        assert [r.status_code for r in firsts] == [201, 201, 201]
        before = user_count(client)

        refused = post(client, "/users", user(3), "k3")

        assert_quota_problem(refused)
        assert user_count(client) == before
        assert len(stored(client, alpha)) == 3
        # What is stored is still replayed; without a key, and for another
        # caller, creates go on.
        replay = post(client, "/users", bodies[0], "k0")
        assert replay.status_code == 201
        assert replay.headers["idempotency-replayed"] == "true"
        assert replay.content == firsts[0].content
        assert post(client, "/users", user(4), None).status_code == 201
        assert post(client, "/users", user(5), "k3", **as_caller(client, beta)).status_code == 201

    # Another process (or a restart) counts what is stored: still refused.
    with app_client(database_url, tag, idempotency_max_keys_per_caller=3) as (other, _, _):
        assert_quota_problem(post(other, "/users", user(6), "k6"))


def test_a_new_key_past_the_callers_byte_cap_is_429(database_url: str) -> None:
    with app_client(database_url, idempotency_max_bytes_per_caller=500) as (client, alpha, _):
        batch = {"users": [user(number) for number in range(3)]}  # an answer of over 500 bytes
        first = post(client, "/users/batch", batch, "batch-1")
        assert first.status_code == 201, first.text
        assert len(first.content) > 500

        refused = post(client, "/users", user(3), "single-1")

        assert_quota_problem(refused)
        assert [row.key for row in stored(client, alpha)] == ["batch-1"]
        assert post(client, "/users/batch", batch, "batch-1").content == first.content


def test_with_both_caps_off_keys_are_not_counted(database_url: str) -> None:
    with app_client(
        database_url, idempotency_max_keys_per_caller=0, idempotency_max_bytes_per_caller=0
    ) as (client, alpha, _):
        for number in range(5):
            assert post(client, "/users", user(number), f"k{number}").status_code == 201
        assert len(stored(client, alpha)) == 5


# --- the size of a kept answer -------------------------------------------------------------------


def test_a_4xx_answer_over_the_size_cap_is_not_kept_and_its_retry_runs_again(
    database_url: str,
) -> None:
    # 25 unknown fields with 1000-character names: the 422 names 20 of them.
    junk = {**user(0), **{f"{number:02d}" + "x" * 998: 1 for number in range(25)}}
    with app_client(database_url) as (client, alpha, _):
        first = post(client, "/users", junk, "big-422", **{"X-Request-ID": "first"})
        problem = assert_problem(first, 422, "validation_failed")
        assert len(first.content) > 16 * 1024
        assert problem["error_count"] == 25

        assert stored(client, alpha) == []
        retry = post(client, "/users", junk, "big-422", **{"X-Request-ID": "retry"})
        assert_problem(retry, 422, "validation_failed")
        assert retry.headers.get("idempotency-replayed") is None
        assert retry.json()["request_id"] == "retry"
        # The key was released: the same key with a corrected body creates.
        corrected = post(client, "/users", user(1), "big-422")
        assert corrected.status_code == 201, corrected.text

        # A small 4xx is kept and replayed, as before.
        small = post(client, "/users", {**user(2), "age": "x"}, "small-422")
        assert_problem(small, 422, "validation_failed")
        assert [row.key for row in stored(client, alpha) if row.status == 422] == ["small-422"]


def test_a_success_is_kept_whatever_its_size(database_url: str) -> None:
    with app_client(database_url, idempotency_max_error_answer_bytes=0) as (client, alpha, _):
        batch = {"users": [user(number) for number in range(50)]}
        first = post(client, "/users/batch", batch, "batch")
        assert first.status_code == 201, first.text

        assert post(client, "/users/batch", batch, "batch").content == first.content
        assert [row.status for row in stored(client, alpha)] == [201]
        # With IDEMPOTENCY_MAX_ERROR_ANSWER_BYTES=0, no 4xx is kept.
        assert_problem(post(client, "/users", {"name": "x"}, "tiny-422"), 422, "validation_failed")
        assert [row.key for row in stored(client, alpha)] == ["batch"]


# --- junk batches --------------------------------------------------------------------------------


def test_junk_batches_with_new_keys_store_little_and_stop_at_the_cap(database_url: str) -> None:
    """The reproduction of finding 3, smaller: 30 batches of 1000 empty users,
    each with a new key, from a caller allowed 20 keys."""
    junk: dict[str, list[dict[str, Any]]] = {"users": [{}] * 1000}
    with app_client(database_url, idempotency_max_keys_per_caller=20) as (client, alpha, _):
        users_before = user_count(client)
        answers = [post(client, "/users/batch", junk, f"junk-{n}") for n in range(30)]

        assert [r.status_code for r in answers] == [422] * 20 + [429] * 10
        assert answers[0].json()["error_count"] == 3000
        assert_quota_problem(answers[-1])
        rows = stored(client, alpha)
        assert len(rows) == 20
        # Was 227 KB apiece: now a few KB (20 errors listed, the rest counted).
        assert max(len(row.body) for row in rows) <= 16 * 1024
        assert user_count(client) == users_before


# --- the sweep gives room back -------------------------------------------------------------------


def test_the_sweep_deletes_expired_keys_in_batches_and_gives_their_room_back(
    database_url: str,
) -> None:
    with app_client(database_url, idempotency_max_keys_per_caller=2) as (client, alpha, _):
        assert post(client, "/users", user(0), "k0").status_code == 201
        assert post(client, "/users", user(1), "k1").status_code == 201
        assert_quota_problem(post(client, "/users", user(2), "k2"))
        engine = client.app.state.database.engine  # type: ignore[attr-defined]
        old = datetime.now(UTC) - timedelta(hours=25)
        hash_ = fingerprint(b"{}")
        answer = StoredAnswer(422, {}, b"x" * 100)
        with engine.begin() as connection:
            # Another caller's 2,500 expired keys: three batches' worth.
            connection.execute(
                insert(idempotency_keys),
                [
                    {
                        "caller": f"{alpha}-old",
                        "endpoint": "POST /users",
                        "key": f"old-{n}",
                        "request_hash": hash_,
                        "created_at": old,
                        "status": answer.status,
                        "headers": "{}",
                        "body": answer.body,
                    }
                    for n in range(2500)
                ],
            )
            connection.execute(
                update(idempotency_keys)
                .where(idempotency_keys.c.caller == alpha)
                .values(created_at=old)
            )

        assert client.portal is not None
        state = client.app.state  # type: ignore[attr-defined]
        client.portal.call(partial(sweep_once, state.database, state.idempotency_usage))

        with engine.connect() as connection:
            left = connection.execute(
                select(func.count())
                .select_from(idempotency_keys)
                .where(idempotency_keys.c.created_at < old + timedelta(minutes=1))
            ).scalar_one()
        assert left == 0
        assert post(client, "/users", user(2), "k2").status_code == 201
