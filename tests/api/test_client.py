"""The Python client (clients/python) against the real app, on every configured database.

The clients reach the app in process: the sync one through the suite's
TestClient (`AppTransport`), the async one through httpx.ASGITransport.
Wrappers around those transports only simulate the network failing
(an answer lost, a refused connection, a proxy's 503 or 502); every answer that
counts comes from the real app and its database.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import delete, insert

from tests.helpers import READER_KEY, WRITER_KEY, user_count
from users_service.api.auth import ANONYMOUS
from users_service.idempotency import fingerprint
from users_service.main import create_app
from users_service.models import idempotency_keys
from users_service.settings import load_settings
from users_service_client import NewUser, UserPublic
from users_service_client.client import (
    AsyncUsersClient,
    Conflict,
    CursorExpired,
    EmailTaken,
    Forbidden,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RetryPolicy,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    UserNotFound,
    UsersClient,
    UsersServiceError,
    ValidationFailed,
    VersionMismatch,
    _opentelemetry,
    error_from_response,
    forwarding,
    retry_after_seconds,
)

BASE_URL = "http://testserver"
UNREACHABLE_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/nothing"
ADA: dict[str, Any] = {"name": "Ada Lovelace", "email": "ada@example.com", "age": 36}
keys_table = idempotency_keys


# --- transports: the real app, and the network failing around it -----------------------


class AppTransport(httpx.BaseTransport):
    """Sends each request to the real app through the suite's TestClient."""

    def __init__(self, test_client: TestClient) -> None:
        self.test_client = test_client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.test_client.send(request)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


class Network(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Between the client and `inner`: records every request, and fails as told.

    `lose_answers`: that many requests reach the app, whose answer is then lost
    (httpx.ReadError). `refuse`: that many requests never leave
    (httpx.ConnectError). `unavailable`: that many get a proxy's 503 with
    `Retry-After`, without reaching the app. `bad_gateway`: that many reach the
    app, and get the 502 a proxy sends when it lost the answer (`gateway_status`).
    """

    def __init__(
        self,
        inner: httpx.BaseTransport | httpx.AsyncBaseTransport,
        *,
        lose_answers: int = 0,
        refuse: int = 0,
        unavailable: int = 0,
        retry_after: str = "1",
        bad_gateway: int = 0,
        gateway_status: int = 502,
    ) -> None:
        self.inner = inner
        self.bad_gateway = bad_gateway
        self.gateway_status = gateway_status
        self.lose_answers = lose_answers
        self.refuse = refuse
        self.unavailable = unavailable
        self.retry_after = retry_after
        self.requests: list[httpx.Request] = []
        self.reached_app = 0

    def _before(self, request: httpx.Request) -> httpx.Response | None:
        self.requests.append(request)
        if self.refuse:
            self.refuse -= 1
            raise httpx.ConnectError("connection refused", request=request)
        if self.unavailable:
            self.unavailable -= 1
            return httpx.Response(
                503,
                headers={"Retry-After": self.retry_after, "Content-Type": "text/plain"},
                content=b"upstream unavailable",
            )
        self.reached_app += 1
        return None

    def _after(self, request: httpx.Request, answer: httpx.Response) -> httpx.Response:
        if self.lose_answers:
            self.lose_answers -= 1
            raise httpx.ReadError("connection reset by peer", request=request)
        if self.bad_gateway:
            self.bad_gateway -= 1
            headers = {"Content-Type": "text/html"}
            return httpx.Response(self.gateway_status, headers=headers, content=b"<h1>Bad</h1>")
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(self.inner, httpx.BaseTransport)
        early = self._before(request)
        if early is not None:
            return early
        answer = self.inner.handle_request(request)
        answer.read()
        return self._after(request, answer)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(self.inner, httpx.AsyncBaseTransport)
        early = self._before(request)
        if early is not None:
            return early
        answer = await self.inner.handle_async_request(request)
        await answer.aread()
        return self._after(request, answer)

    def idempotency_keys(self) -> list[str | None]:
        return [request.headers.get("Idempotency-Key") for request in self.requests]


class Sleeps(list[float]):
    """Records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def users(client: TestClient, sleeps: Sleeps) -> Iterator[UsersClient]:
    """A sync client on the real app (its users table empty)."""
    with UsersClient(BASE_URL, transport=AppTransport(client), sleep=sleeps) as users_client:
        yield users_client


def client_through(network: Network, sleeps: Sleeps, **options: Any) -> UsersClient:
    return UsersClient(BASE_URL, transport=network, sleep=sleeps, **options)


def async_client_through(network: Network, sleeps: Sleeps, **options: Any) -> AsyncUsersClient:
    return AsyncUsersClient(BASE_URL, transport=network, sleep=sleeps.asleep, **options)


def all_users(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/users", params={"limit": 500})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# --- every method ----------------------------------------------------------------------


def test_create_user_returns_the_typed_user_the_service_stored(
    users: UsersClient, client: TestClient
) -> None:
    user = users.create_user(name=" Ada Lovelace ", email="Ada@Example.COM", age=36)

    assert isinstance(user, UserPublic)
    assert (user.name, user.email, user.age, user.version) == (
        "Ada Lovelace",
        "ada@example.com",
        36,
        1,
    )
    assert isinstance(user.id, uuid.UUID) and isinstance(user.created_at, datetime)
    assert all_users(client) == [json.loads(user.model_dump_json())]


def test_create_users_creates_the_batch_in_order(users: UsersClient, client: TestClient) -> None:
    created = users.create_users(
        [NewUser(name="First", email="first@example.com", age=1), dict(ADA)]
    )

    assert [u.email for u in created] == ["first@example.com", "ada@example.com"]
    assert user_count(client) == 2


def test_get_user_by_user_or_by_id(users: UsersClient) -> None:
    user = users.create_user(**ADA)

    assert users.get_user(user) == user
    assert users.get_user(user.id) == user
    assert users.get_user(str(user.id)) == user


def test_list_users_returns_a_typed_page_with_filters_and_total(users: UsersClient) -> None:
    for age in (20, 30, 40):
        users.create_user(name=f"Age {age}", email=f"age{age}@example.com", age=age)

    page = users.list_users(min_age=25, sort="-age", include_total=True, limit=1)

    assert [u.age for u in page.items] == [40]
    assert page.total == 2
    assert page.next_cursor is not None
    following = users.list_users(min_age=25, sort="-age", limit=1, cursor=page.next_cursor)
    assert [u.age for u in following.items] == [30]
    assert following.total is None


def test_list_users_passes_created_after_as_iso_8601(users: UsersClient) -> None:
    earlier = users.create_user(name="Earlier", email="earlier@example.com", age=1)
    later = users.create_user(name="Later", email="later@example.com", age=2)

    page = users.list_users(created_after=earlier.created_at)

    assert page.items == [later]


def test_iter_users_walks_every_page(users: UsersClient, client: TestClient) -> None:
    network = Network(AppTransport(client))
    users.create_users(
        [{"name": f"Name {i:02}", "email": f"n{i}@example.com", "age": i % 3} for i in range(7)]
    )

    with client_through(network, Sleeps()) as walking:
        walked = list(walking.iter_users(limit=2, sort="-name", max_age=1))

    expected = [f"Name {i:02}" for i in reversed(range(7)) if i % 3 <= 1]
    assert [u.name for u in walked] == expected  # 5 users
    assert len(network.requests) == 3  # pages of 2, 2 and 1
    assert [r.url.params.get("max_age") for r in network.requests] == ["1", "1", "1"]


def test_replace_user_with_the_user_sends_its_version_as_if_match(users: UsersClient) -> None:
    user = users.create_user(**ADA)

    replaced = users.replace_user(user, name="Augusta Ada King", email="ada@example.com", age=37)

    assert (replaced.name, replaced.age, replaced.version) == ("Augusta Ada King", 37, 2)
    with pytest.raises(VersionMismatch) as stale:
        users.replace_user(user, name="Stale", email="ada@example.com", age=1)
    assert stale.value.status == 412
    assert users.get_user(user.id) == replaced


def test_update_user_changes_only_the_fields_given(users: UsersClient) -> None:
    user = users.create_user(**ADA)

    updated = users.update_user(user, age=37)

    assert (updated.name, updated.email, updated.age, updated.version) == (
        "Ada Lovelace",
        "ada@example.com",
        37,
        2,
    )


def test_if_match_conflicts_raise_version_mismatch_and_write_nothing(
    users: UsersClient,
) -> None:
    user = users.create_user(**ADA)
    users.update_user(user.id, name="Someone else's change")  # no If-Match: last writer wins

    with pytest.raises(VersionMismatch) as conflict:
        users.update_user(user, name="Mine")  # If-Match: "1", the user is at 2
    with pytest.raises(VersionMismatch):
        users.update_user(user.id, if_match=1, name="Mine")
    with pytest.raises(VersionMismatch):
        users.delete_user(user)

    assert conflict.value.code == "version_mismatch"
    assert conflict.value.earlier_attempt_unknown is False
    current = users.get_user(user.id)
    assert (current.name, current.version) == ("Someone else's change", 2)
    assert users.update_user(user.id, if_match='"2"', name="Mine").version == 3
    assert users.update_user(user.id, if_match="*", age=1).version == 4


def test_delete_user_deletes_and_then_the_user_is_not_found(
    users: UsersClient, client: TestClient
) -> None:
    user = users.create_user(**ADA)

    users.delete_user(user)

    assert user_count(client) == 0
    with pytest.raises(UserNotFound):
        users.get_user(user.id)
    with pytest.raises(UserNotFound):
        users.delete_user(user.id)


def test_health_and_readiness(users: UsersClient) -> None:
    assert users.health() == {"status": "ok"}
    assert users.readiness() == {"status": "ready", "database": "ok", "schema": "current"}


# --- errors: one class per code, carrying the problem details ---------------------------


def test_email_taken_carries_the_problem_details(users: UsersClient) -> None:
    users.create_user(**ADA)

    with pytest.raises(EmailTaken) as taken:
        users.create_user(name="Another Ada", email="ADA@example.com", age=20)

    error = taken.value
    assert isinstance(error, Conflict) and isinstance(error, UsersServiceError)
    assert (error.status, error.code, error.title) == (409, "email_taken", "Conflict")
    assert error.detail == "A user with this email already exists"
    assert [e.loc for e in error.errors] == [("body", "email")]
    assert error.request_id


def test_invalid_input_raises_validation_failed_naming_the_field(users: UsersClient) -> None:
    with pytest.raises(ValidationFailed) as invalid:
        users.create_user(name="Ada", email="ada@example.com", age=151)
    with pytest.raises(ValidationFailed) as bad_item:
        users.create_users([dict(ADA), {**ADA, "email": "not an email"}])
    with pytest.raises(ValidationFailed) as bad_filter:
        users.list_users(min_age=-1)

    assert invalid.value.code == "validation_failed"
    assert [e.loc for e in invalid.value.errors] == [("body", "age")]
    assert [e.loc for e in bad_item.value.errors] == [("body", "users", 1, "email")]
    assert [e.loc for e in bad_filter.value.errors] == [("query", "min_age")]


def test_a_reused_idempotency_key_raises_idempotency_key_reused(users: UsersClient) -> None:
    key = f"client-test-{uuid.uuid4()}"
    users.create_user(**ADA, idempotency_key=key)

    with pytest.raises(IdempotencyKeyReused) as reused:
        users.create_user(name="Other", email="other@example.com", age=1, idempotency_key=key)

    assert isinstance(reused.value, ValidationFailed)
    assert reused.value.code == "idempotency_key_reused"


def test_a_body_over_the_limit_raises_payload_too_large(users: UsersClient) -> None:
    with pytest.raises(PayloadTooLarge) as too_large:
        users.create_user(name="x" * 1_100_000, email="ada@example.com", age=36)

    assert too_large.value.code == "payload_too_large"


def test_a_wrong_base_url_raises_not_found(client: TestClient) -> None:
    with (
        UsersClient(f"{BASE_URL}/v1", transport=AppTransport(client)) as misplaced,
        pytest.raises(NotFound) as missing,
    ):
        misplaced.get_user(uuid.uuid4())

    assert not isinstance(missing.value, UserNotFound)
    assert missing.value.code == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "content_type", "status", "code", "error_class"),
    [
        ("DELETE", "/users", "application/json", 405, "method_not_allowed", MethodNotAllowed),
        ("POST", "/users", "text/plain", 415, "unsupported_media_type", UnsupportedMediaType),
    ],
)
def test_answers_the_client_never_provokes_still_map_by_code(
    client: TestClient,
    method: str,
    path: str,
    content_type: str,
    status: int,
    code: str,
    error_class: type[UsersServiceError],
) -> None:
    answer = client.request(method, path, content=b"{}", headers={"Content-Type": content_type})

    error = error_from_response(answer)

    assert isinstance(error, error_class)
    assert (error.status, error.code) == (status, code)
    assert error.request_id == answer.headers["x-request-id"]


def test_unknown_codes_map_to_the_class_of_their_status() -> None:
    request = httpx.Request("GET", f"{BASE_URL}/users")

    def answer(status: int, body: bytes) -> httpx.Response:
        return httpx.Response(status, content=body, request=request)

    new_conflict = error_from_response(answer(409, b'{"code": "new_kind", "detail": "d"}'))
    odd = error_from_response(answer(418, b'{"code": "teapot"}'))
    proxy_page = error_from_response(answer(502, b"<html>Bad gateway</html>"))

    assert type(new_conflict) is Conflict and new_conflict.code == "new_kind"
    assert type(odd) is UsersServiceError and odd.status == 418
    assert type(proxy_page) is UsersServiceError
    assert (proxy_page.code, proxy_page.title) == (None, "Bad Gateway")


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    def retry_after(value: str) -> float | None:
        return retry_after_seconds(httpx.Response(503, headers={"Retry-After": value}))

    in_a_minute = email.utils.format_datetime(datetime.now(UTC) + timedelta(minutes=1), True)

    assert retry_after("7") == 7.0
    assert 55 < (retry_after(in_a_minute) or 0) <= 60
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: at once
    assert retry_after("soon") is None


# --- API keys ---------------------------------------------------------------------------


def test_api_key_is_sent_as_bearer_and_refusals_raise_unauthorized_or_forbidden(
    keyed: TestClient,
) -> None:
    transport = AppTransport(keyed)
    with (
        UsersClient(BASE_URL, transport=transport, api_key=WRITER_KEY) as writer,
        UsersClient(BASE_URL, transport=transport, api_key=READER_KEY) as reader,
        UsersClient(BASE_URL, transport=transport) as nobody,
        UsersClient(BASE_URL, transport=transport, api_key="wrong") as stranger,
    ):
        user = writer.create_user(**ADA)
        assert reader.get_user(user.id) == user
        with pytest.raises(Forbidden) as forbidden:
            reader.update_user(user, age=1)
        with pytest.raises(Unauthorized) as unauthorized:
            nobody.get_user(user.id)
        with pytest.raises(Unauthorized):
            stranger.list_users()
        assert nobody.health() == {"status": "ok"}

    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")


# --- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lose_answers", "bad_gateway"),
    [
        (1, 0),
        # HAProxy answers 502 when the replica running the request dies
        # before its answer is whole: the create may have run (here it did).
        (0, 1),
    ],
    ids=["connection broken", "proxy 502"],
)
def test_a_create_whose_answer_is_lost_is_retried_with_its_key_and_creates_one_user(
    client: TestClient, sleeps: Sleeps, lose_answers: int, bad_gateway: int
) -> None:
    network = Network(AppTransport(client), lose_answers=lose_answers, bad_gateway=bad_gateway)

    with client_through(network, sleeps) as users:
        user = users.create_user(**ADA)

    keys = network.idempotency_keys()
    assert len(keys) == 2 and keys[0] is not None and keys[0] == keys[1]
    assert network.reached_app == 2
    assert len(sleeps) == 1
    assert all_users(client) == [json.loads(user.model_dump_json())]


def test_a_batch_whose_answer_is_lost_is_retried_and_creates_each_user_once(
    client: TestClient, sleeps: Sleeps
) -> None:
    network = Network(AppTransport(client), lose_answers=1)

    with client_through(network, sleeps) as users:
        created = users.create_users([dict(ADA), {**ADA, "email": "two@example.com"}])

    assert len(set(network.idempotency_keys())) == 1
    assert len(network.requests) == 2
    assert sorted(u["email"] for u in all_users(client)) == sorted(u.email for u in created)


def test_each_create_call_gets_a_key_of_its_own(client: TestClient, sleeps: Sleeps) -> None:
    network = Network(AppTransport(client))

    with client_through(network, sleeps) as users:
        users.create_user(**ADA)
        users.create_user(name="Bob", email="bob@example.com", age=1)

    first, second = network.idempotency_keys()
    assert first and second and first != second
    uuid.UUID(first)


def test_a_create_without_key_is_not_retried_once_it_may_have_arrived(
    client: TestClient, sleeps: Sleeps
) -> None:
    network = Network(AppTransport(client), lose_answers=1)

    with (
        client_through(network, sleeps, idempotency_keys=False) as users,
        pytest.raises(httpx.ReadError),
    ):
        users.create_user(**ADA)

    assert network.idempotency_keys() == [None]
    assert sleeps == []
    assert user_count(client) == 1  # the one attempt did create the user


def test_a_create_without_key_is_retried_when_it_never_left(
    client: TestClient, sleeps: Sleeps
) -> None:
    network = Network(AppTransport(client), refuse=2)

    with client_through(network, sleeps, idempotency_keys=False) as users:
        user = users.create_user(**ADA)

    assert len(network.requests) == 3 and network.reached_app == 1
    assert len(sleeps) == 2
    assert [u["id"] for u in all_users(client)] == [str(user.id)]


def test_connection_errors_back_off_exponentially_with_full_jitter_up_to_the_attempts(
    client: TestClient, sleeps: Sleeps
) -> None:
    network = Network(AppTransport(client), refuse=10)
    policy = RetryPolicy(attempts=5, backoff=0.5, max_backoff=2.0)

    with (
        client_through(network, sleeps, retry=policy, rng=random.Random(7)) as users,
        pytest.raises(httpx.ConnectError),
    ):
        users.list_users()

    assert len(network.requests) == 5
    ceilings = [0.5, 1.0, 2.0, 2.0]
    assert len(sleeps) == 4
    assert all(0 <= s <= c for s, c in zip(sleeps, ceilings, strict=True)), sleeps
    assert len(set(sleeps)) == 4  # jittered, not fixed


def test_a_504_on_a_read_is_retried_but_a_502_on_a_create_without_key_is_raised(
    client: TestClient, sleeps: Sleeps
) -> None:
    with UsersClient(BASE_URL, transport=AppTransport(client)) as setup:
        user = setup.create_user(**ADA)
    network = Network(AppTransport(client), bad_gateway=1, gateway_status=504)
    with client_through(network, sleeps) as users:
        assert users.get_user(user.id) == user
    assert network.reached_app == 2 and len(sleeps) == 1

    network = Network(AppTransport(client), bad_gateway=1)
    with (
        client_through(network, sleeps, idempotency_keys=False) as users,
        pytest.raises(UsersServiceError) as raised,
    ):
        users.create_user(name="Bob", email="bob@example.com", age=1)
    assert raised.value.status == 502
    assert network.reached_app == 1  # not repeated: it did create Bob
    assert user_count(client) == 2


def test_a_503_is_retried_after_its_retry_after(client: TestClient, sleeps: Sleeps) -> None:
    with UsersClient(BASE_URL, transport=AppTransport(client)) as setup:
        user = setup.create_user(**ADA)
    network = Network(AppTransport(client), unavailable=1, retry_after="1")

    with client_through(network, sleeps) as users:
        fetched = users.get_user(user.id)

    assert fetched == user
    assert sleeps == [1.0]
    assert network.reached_app == 1


def test_a_retry_after_longer_than_the_policy_allows_is_not_waited_for(
    client: TestClient, sleeps: Sleeps
) -> None:
    network = Network(AppTransport(client), unavailable=1, retry_after="120")

    with client_through(network, sleeps) as users, pytest.raises(ServiceUnavailable) as error:
        users.list_users()

    assert sleeps == []
    assert error.value.retry_after == 120.0
    assert error.value.code is None  # the proxy's page is not a problem


def test_the_services_own_503_is_retried_then_raised_as_service_unavailable(
    sleeps: Sleeps,
) -> None:
    app = create_app(load_settings(database_url=UNREACHABLE_DATABASE_URL, environment="test"))
    try:
        with (
            TestClient(app, raise_server_exceptions=False) as unreachable,
            UsersClient(
                BASE_URL,
                transport=AppTransport(unreachable),
                sleep=sleeps,
                retry=RetryPolicy(attempts=3),
            ) as users,
        ):
            with pytest.raises(ServiceUnavailable) as unavailable:
                users.get_user(uuid.uuid4())
            readiness = users.readiness()
    finally:
        app.state.database.engine.dispose()

    error = unavailable.value
    assert (error.status, error.code) == (503, "service_unavailable")
    assert error.retry_after is not None and error.retry_after > 0
    assert sleeps == [error.retry_after, error.retry_after]
    assert readiness == {"status": "unavailable", "database": "unreachable", "schema": "unknown"}


def insert_claim_in_flight(app: FastAPI, key: str, body: dict[str, Any]) -> None:
    """The key as a request still running would hold it."""
    with app.state.database.engine.begin() as connection:
        connection.execute(
            insert(keys_table).values(
                caller=ANONYMOUS,
                endpoint="POST /users",
                key=key,
                request_hash=fingerprint(json.dumps(body).encode()),
                created_at=datetime.now(UTC) - timedelta(seconds=5),
            )
        )


def release_claim(app: FastAPI, key: str) -> None:
    with app.state.database.engine.begin() as connection:
        connection.execute(delete(keys_table).where(keys_table.c.key == key))


def test_a_create_whose_key_is_in_use_is_retried_until_the_key_is_free(
    client: TestClient, app: FastAPI
) -> None:
    key = f"client-test-{uuid.uuid4()}"
    insert_claim_in_flight(app, key, ADA)
    waits: list[float] = []

    def wait_then_release(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # the first request gave up its key meanwhile
            release_claim(app, key)

    with UsersClient(BASE_URL, transport=AppTransport(client), sleep=wait_then_release) as users:
        user = users.create_user(**ADA, idempotency_key=key)

    assert len(waits) == 2
    assert [u["id"] for u in all_users(client)] == [str(user.id)]


def test_a_key_in_use_through_every_attempt_raises_idempotency_key_in_use(
    client: TestClient, app: FastAPI, sleeps: Sleeps
) -> None:
    key = f"client-test-{uuid.uuid4()}"
    insert_claim_in_flight(app, key, ADA)

    with (
        UsersClient(BASE_URL, transport=AppTransport(client), sleep=sleeps) as users,
        pytest.raises(IdempotencyKeyInUse),
    ):
        users.create_user(**ADA, idempotency_key=key)

    assert len(sleeps) == RetryPolicy().attempts - 1
    assert user_count(client) == 0


def test_a_delete_whose_answer_is_lost_returns_once_the_user_is_gone(
    users: UsersClient, client: TestClient, sleeps: Sleeps
) -> None:
    user = users.create_user(**ADA)
    network = Network(AppTransport(client), lose_answers=1)

    with client_through(network, sleeps) as retrying:
        retrying.delete_user(user)  # the retry's 404: deleted by the first attempt

    assert network.reached_app == 2
    assert user_count(client) == 0


def test_a_conditional_update_whose_answer_is_lost_writes_once_and_says_so(
    users: UsersClient, client: TestClient, sleeps: Sleeps
) -> None:
    user = users.create_user(**ADA)
    network = Network(AppTransport(client), lose_answers=1)

    with client_through(network, sleeps) as retrying, pytest.raises(VersionMismatch) as error:
        retrying.update_user(user, age=37)

    assert error.value.earlier_attempt_unknown is True
    current = users.get_user(user.id)
    assert (current.age, current.version) == (37, 2)


# --- the async client -------------------------------------------------------------------


def test_async_client_does_every_operation_on_the_real_app(
    app: FastAPI, client: TestClient
) -> None:
    async def scenario() -> None:
        network = Network(httpx.ASGITransport(app=app))
        async with async_client_through(network, Sleeps()) as users:
            ada = await users.create_user(**ADA)
            batch = await users.create_users(
                [{"name": f"B{i}", "email": f"b{i}@example.com", "age": i} for i in range(4)]
            )
            assert await users.get_user(ada.id) == ada
            page = await users.list_users(limit=2, include_total=True)
            assert (len(page.items), page.total) == (2, 5)
            walked = [u.email async for u in users.iter_users(limit=2, sort="email")]
            assert walked == sorted(["ada@example.com", *(u.email for u in batch)])
            replaced = await users.replace_user(ada, name="Ada", email="ada@example.com", age=37)
            with pytest.raises(VersionMismatch):
                await users.update_user(ada, age=1)
            updated = await users.update_user(replaced, age=38)
            assert (updated.name, updated.age, updated.version) == ("Ada", 38, 3)
            with pytest.raises(EmailTaken):
                await users.create_user(name="Again", email="ada@example.com", age=1)
            await users.delete_user(updated)
            with pytest.raises(UserNotFound):
                await users.get_user(ada.id)
            assert await users.health() == {"status": "ok"}
            assert (await users.readiness())["status"] == "ready"

    asyncio.run(scenario())

    assert user_count(client) == 4


def test_async_create_whose_answer_is_lost_is_retried_and_creates_one_user(
    app: FastAPI, client: TestClient, sleeps: Sleeps
) -> None:
    network = Network(httpx.ASGITransport(app=app), lose_answers=1)

    async def create() -> UserPublic:
        async with async_client_through(network, sleeps) as users:
            return await users.create_user(**ADA)

    user = asyncio.run(create())

    keys = network.idempotency_keys()
    assert len(keys) == 2 and keys[0] is not None and keys[0] == keys[1]
    assert network.reached_app == 2
    assert all_users(client) == [json.loads(user.model_dump_json())]


def test_async_503_is_retried_after_its_retry_after(
    app: FastAPI, client: TestClient, sleeps: Sleeps
) -> None:
    network = Network(httpx.ASGITransport(app=app), unavailable=1, retry_after="1")

    async def create() -> UserPublic:
        async with async_client_through(network, sleeps) as users:
            return await users.create_user(**ADA)

    user = asyncio.run(create())

    assert sleeps == [1.0]
    assert network.reached_app == 1
    assert [u["id"] for u in all_users(client)] == [str(user.id)]


# --- forwarding the caller's request id and trace ----------------------------------

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def recording() -> tuple[list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok"})

    return seen, httpx.MockTransport(answer)


def test_calls_in_a_forwarding_block_send_its_request_id_and_traceparent() -> None:
    seen, transport = recording()
    with UsersClient(BASE_URL, transport=transport) as users_client:
        with forwarding(request_id="order-42", traceparent=TRACEPARENT):
            users_client.health()
        users_client.health()

    assert seen[0].headers["x-request-id"] == "order-42"
    assert seen[0].headers["traceparent"] == TRACEPARENT
    assert "x-request-id" not in seen[1].headers and "traceparent" not in seen[1].headers


def test_async_calls_in_a_forwarding_block_send_its_request_id_and_traceparent() -> None:
    seen, transport = recording()

    async def scenario() -> None:
        async with AsyncUsersClient(BASE_URL, transport=transport) as users_client:
            with forwarding(request_id="order-43", traceparent=TRACEPARENT):
                await asyncio.gather(users_client.health(), users_client.health())

    asyncio.run(scenario())

    assert [request.headers["x-request-id"] for request in seen] == ["order-43"] * 2
    assert [request.headers["traceparent"] for request in seen] == [TRACEPARENT] * 2


def test_the_current_opentelemetry_span_is_forwarded_rather_than_a_given_traceparent() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    seen, transport = recording()
    tracer = TracerProvider().get_tracer("caller")
    with (
        UsersClient(BASE_URL, transport=transport) as users_client,
        tracer.start_as_current_span("handle order") as span,
        forwarding(traceparent=TRACEPARENT),
    ):
        users_client.health()
    context = span.get_span_context()

    version, trace_id, span_id, _flags = seen[0].headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == (
        "00",
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
    )


def test_without_opentelemetry_installed_the_given_traceparent_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails
    _opentelemetry.cache_clear()
    seen, transport = recording()
    try:
        with (
            UsersClient(BASE_URL, transport=transport) as users_client,
            forwarding(traceparent=TRACEPARENT),
        ):
            users_client.health()
    finally:
        _opentelemetry.cache_clear()

    assert seen[0].headers["traceparent"] == TRACEPARENT


def test_iter_changes_resumes_from_a_saved_cursor_and_follow_waits_for_new_ones(
    users: UsersClient, client: TestClient
) -> None:
    ada = users.create_user(name="Ada", email="ada@example.com", age=36)
    users.update_user(ada, age=37)
    pages = list(users.iter_changes(limit=1))
    assert [(c.action, c.version) for page in pages for c in page.items] == [
        ("created", 1),
        ("updated", 2),
    ]
    saved = pages[-1].next_cursor

    grace = users.create_user(name="Grace", email="grace@example.com", age=85)
    resumed = next(users.follow(saved, wait=5))
    assert [(c.action, c.user_id) for c in resumed.items] == [("created", grace.id)]
    assert resumed.items[0].user == grace
    assert list(users.iter_changes(resumed.next_cursor)) == []

    history = users.user_history(ada, limit=1)
    assert [c.version for c in history.items] == [2]
    older = users.user_history(ada, cursor=history.next_cursor)
    assert [c.version for c in older.items] == [1] and older.next_cursor is None


def test_a_feed_cursor_past_retention_raises_cursor_expired() -> None:
    error = error_from_response(
        httpx.Response(
            410,
            json={"code": "cursor_expired", "title": "Gone", "status": 410, "detail": "gone"},
        )
    )
    assert isinstance(error, CursorExpired) and error.status == 410
