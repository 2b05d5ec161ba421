"""How the service answers bad requests: status, code, problem details."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.helpers import ADA, create_ada, write_path

VALID = ADA
VALID_TEXT = json.dumps(VALID)
WRITE_METHODS = ["POST", "PUT", "PATCH"]
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}
REQUEST_ID = re.compile(r"[A-Za-z0-9\-_.:]{1,128}")


def send_bytes(
    client: TestClient,
    method: str,
    path: str,
    content: bytes,
    content_type: str | None = "application/json",
) -> httpx.Response:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response: httpx.Response = client.request(method, path, content=content, headers=headers)
    return response


def body_with(field: str, raw_value: str) -> bytes:
    """A valid body as JSON text, with `field` set to the JSON text `raw_value`."""
    others = json.dumps({key: value for key, value in VALID.items() if key != field})
    return f'{others[:-1]}, "{field}": {raw_value}}}'.encode()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert set(problem) >= PROBLEM_KEYS, problem
    assert problem["status"] == status
    assert problem["code"] == code
    assert isinstance(problem["type"], str) and problem["type"]
    assert isinstance(problem["title"], str) and problem["title"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    assert problem["request_id"] == response.headers["x-request-id"]
    return problem


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("method", WRITE_METHODS)
def test_body_without_a_json_content_type_is_refused(
    client: TestClient, method: str, content_type: str | None
) -> None:
    path = write_path(client, method)
    response = send_bytes(client, method, path, VALID_TEXT.encode(), content_type)
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("method", WRITE_METHODS)
def test_write_without_a_body_or_content_type_is_refused(client: TestClient, method: str) -> None:
    response = client.request(method, write_path(client, method))
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "content_type",
    ["", "text/json", "application/xml", "multipart/form-data; boundary=x", "application/jsonx"],
)
def test_body_in_another_content_type_is_refused(client: TestClient, content_type: str) -> None:
    response = send_bytes(client, "POST", "/users", VALID_TEXT.encode(), content_type)
    assert_problem(response, 415, "unsupported_media_type")
    assert client.get("/users").json()["items"] == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
    ],
)
@pytest.mark.parametrize(("method", "status"), [("POST", 201), ("PUT", 200), ("PATCH", 200)])
def test_json_body_is_accepted_with_or_without_charset(
    client: TestClient, method: str, status: int, content_type: str
) -> None:
    path = write_path(client, method)
    response = send_bytes(client, method, path, VALID_TEXT.encode(), content_type)
    assert response.status_code == status, response.text
    assert response.json()["email"] == "ada@example.com"


@pytest.mark.parametrize(
    "content_type", ["application/merge-patch+json", "application/merge-patch+json; charset=utf-8"]
)
def test_patch_accepts_merge_patch_json(client: TestClient, content_type: str) -> None:
    user = create_ada(client)
    response = send_bytes(client, "PATCH", f"/users/{user['id']}", b'{"age": 37}', content_type)
    assert response.status_code == 200, response.text
    assert response.json()["age"] == 37


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_merge_patch_json_is_refused_by_post_and_put(client: TestClient, method: str) -> None:
    path = write_path(client, method)
    response = send_bytes(client, method, path, VALID_TEXT.encode(), "application/merge-patch+json")
    assert_problem(response, 415, "unsupported_media_type")


DEEP = 100_000

MALFORMED_BODIES = {
    "truncated": b'{"name": "Ada",',
    "trailing-garbage": VALID_TEXT.encode() + b" x",
    "two-objects": VALID_TEXT.encode() * 2,
    "single-quotes": b"{'name': 'Ada', 'email': 'ada@example.com', 'age': 36}",
    "trailing-comma": b'{"name": "Ada", "email": "ada@example.com", "age": 36,}',
    "nan": body_with("age", "NaN"),
    "infinity": body_with("age", "Infinity"),
    "invalid-utf8": body_with("name", '"Ada"').replace(b"Ada", b"Ad\xff"),
    "overlong-utf8": body_with("name", '"Ada"').replace(b"Ada", b"\xc0\xaf"),
    "latin-1": body_with("name", '"Zoë"').replace("Zoë".encode(), "Zoë".encode("latin-1")),
    "utf-16": VALID_TEXT.encode("utf-16"),
    "nested-100000-deep": b"[" * DEEP + b"]" * DEEP,
    "nested-100000-deep-field": body_with("name", "[" * DEEP + "]" * DEEP),
    "nested-objects-100000-deep": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "empty": b"",
    "whitespace-only": b" \n",
    "array": b"[]",
    "array-of-user": b"[" + VALID_TEXT.encode() + b"]",
    "string": b'"Ada"',
    "number": b"36",
    "null": b"null",
    "true": b"true",
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
@pytest.mark.parametrize("method", WRITE_METHODS)
def test_body_that_is_not_one_json_object_is_refused(
    client: TestClient, method: str, body: bytes
) -> None:
    path = write_path(client, method)
    problem = assert_problem(send_bytes(client, method, path, body), 422, "validation_failed")
    assert problem["errors"][0]["loc"] == ["body"]


def test_empty_merge_patch_body_is_refused(client: TestClient) -> None:
    user = create_ada(client)
    response = send_bytes(
        client, "PATCH", f"/users/{user['id']}", b"", "application/merge-patch+json"
    )
    assert_problem(response, 422, "validation_failed")


def test_validation_problem_lists_each_failing_field(client: TestClient) -> None:
    response = client.post("/users", json={"name": "", "email": "Ada <a@b.co>", "age": 151})
    problem = assert_problem(response, 422, "validation_failed")
    assert all(set(error) == {"loc", "msg", "type"} for error in problem["errors"])
    assert all(isinstance(error["msg"], str) and error["msg"] for error in problem["errors"])
    assert all(isinstance(error["type"], str) and error["type"] for error in problem["errors"])
    assert sorted(error["loc"] for error in problem["errors"]) == [
        ["body", "age"],
        ["body", "email"],
        ["body", "name"],
    ]


def test_invalid_email_is_located_at_body_email(client: TestClient) -> None:
    response = client.post("/users", json={**VALID, "email": "not-an-email"})
    problem = assert_problem(response, 422, "validation_failed")
    assert [error["loc"] for error in problem["errors"]] == [["body", "email"]]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("GET", "/user"),
        ("GET", f"/users/{uuid.uuid4()}/name"),
    ],
)
def test_unknown_route_is_not_found(client: TestClient, method: str, path: str) -> None:
    assert_problem(client.request(method, path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/users"),
        ("PATCH", "/users"),
        ("DELETE", "/users"),
        ("POST", "/users/{id}"),
        ("POST", "/healthz"),
        ("DELETE", "/healthz"),
    ],
)
def test_wrong_method_is_method_not_allowed(client: TestClient, method: str, path: str) -> None:
    user = create_ada(client)
    response = client.request(method, path.format(id=user["id"]))
    assert_problem(response, 405, "method_not_allowed")
    assert method not in response.headers["allow"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/users", "GET, HEAD, POST"),
        ("OPTIONS", "/users", "GET, HEAD, POST"),
        ("POST", "/users/{id}", "DELETE, GET, HEAD, PATCH, PUT"),
        ("OPTIONS", "/users/{id}", "DELETE, GET, HEAD, PATCH, PUT"),
        ("GET", "/users/batch", "POST"),
        ("PUT", "/users/batch", "POST"),
    ],
)
def test_method_not_allowed_lists_every_method_of_the_path(
    client: TestClient, method: str, path: str, allowed: str
) -> None:
    user = create_ada(client)
    response = client.request(method, path.format(id=user["id"]))
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allowed


def unknown_id() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize("user_id", [unknown_id(), unknown_id().upper()], ids=["lower", "upper"])
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_unknown_user_is_user_not_found(client: TestClient, method: str, user_id: str) -> None:
    body = None if method in ("GET", "DELETE") else VALID
    response = client.request(method, f"/users/{user_id}", json=body)
    problem = assert_problem(response, 404, "user_not_found")
    assert "errors" not in problem or problem["errors"] is None


SAMPLE_ID = "5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10"
MALFORMED_IDS = {
    "no-dashes": SAMPLE_ID.replace("-", ""),
    "braces": "%7B" + SAMPLE_ID + "%7D",
    "urn": "urn:uuid:" + SAMPLE_ID,
    "misplaced-dashes": "5b1f0a528-f1e-4f0e-9c55-2c1f3e7f9b10",
    "non-hex": SAMPLE_ID.replace("5b", "zz"),
    "too-short": SAMPLE_ID[:-1],
    "too-long": SAMPLE_ID + "0",
    "trailing-newline": SAMPLE_ID + "%0A",
    "leading-space": "%20" + SAMPLE_ID,
    "fullwidth-digit": "%EF%BC%95" + SAMPLE_ID[1:],
    "word": "me",
    "integer": "1",
    "nul": SAMPLE_ID[:-1] + "%00",
}


@pytest.mark.parametrize("user_id", MALFORMED_IDS.values(), ids=MALFORMED_IDS.keys())
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_malformed_user_id_is_refused(client: TestClient, method: str, user_id: str) -> None:
    body = None if method in ("GET", "DELETE") else VALID
    response = client.request(method, f"/users/{user_id}", json=body)
    problem = assert_problem(response, 422, "validation_failed")
    assert [error["loc"] for error in problem["errors"]] == [["path", "user_id"]]


def test_existing_user_is_found_by_its_id_in_upper_case(client: TestClient) -> None:
    user = create_ada(client)
    response = client.get(f"/users/{user['id'].upper()}")
    assert response.status_code == 200, response.text
    assert response.json() == user


@pytest.mark.parametrize(("method", "status"), [("PUT", 200), ("PATCH", 200), ("DELETE", 204)])
def test_existing_user_is_written_by_its_id_in_upper_case(
    client: TestClient, method: str, status: int
) -> None:
    user = create_ada(client)
    body = None if method == "DELETE" else {**VALID, "age": 37}
    response = client.request(method, f"/users/{user['id'].upper()}", json=body)
    assert response.status_code == status, response.text
    if method != "DELETE":
        assert response.json()["id"] == user["id"]
        assert response.json()["age"] == 37


@pytest.mark.parametrize(
    "request_id",
    [
        "a",
        "abc-123",
        "A-Z_a.z:0-9",
        "x" * 128,
        str(uuid.uuid4()),
        "trace:00-4bf92f3577b34da6-00f067aa0ba902b7-01",
    ],
)
def test_valid_caller_request_id_is_echoed(client: TestClient, request_id: str) -> None:
    created = client.post("/users", json=VALID, headers={"X-Request-ID": request_id})
    assert created.status_code == 201
    assert created.headers["x-request-id"] == request_id
    missing = client.get(f"/users/{unknown_id()}", headers={"X-Request-ID": request_id})
    assert missing.headers["x-request-id"] == request_id
    assert missing.json()["request_id"] == request_id


@pytest.mark.parametrize(
    "request_id",
    ["x" * 129, "x" * 1000, "has space", "", " ", "semi;colon", "slash/", "quote'", "a,b", "tab\t"],
)
def test_invalid_caller_request_id_is_replaced_by_a_new_one(
    client: TestClient, request_id: str
) -> None:
    response = client.get(f"/users/{unknown_id()}", headers={"X-Request-ID": request_id})
    assert response.status_code == 404
    assigned = response.headers["x-request-id"]
    assert assigned != request_id
    assert REQUEST_ID.fullmatch(assigned)
    assert response.json()["request_id"] == assigned


def test_each_request_without_an_id_gets_a_new_one(client: TestClient) -> None:
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(REQUEST_ID.fullmatch(request_id) for request_id in ids)


def test_request_id_is_sent_with_successful_answers(client: TestClient) -> None:
    created = client.post("/users", json=VALID)
    answers = [
        created,
        client.get(f"/users/{created.json()['id']}"),
        client.get("/users"),
        client.patch(f"/users/{created.json()['id']}", json={"age": 40}),
        client.get("/healthz"),
        client.delete(f"/users/{created.json()['id']}"),
    ]
    assert [answer.status_code for answer in answers] == [201, 200, 200, 200, 200, 204]
    assert all(REQUEST_ID.fullmatch(answer.headers["x-request-id"]) for answer in answers)


Send = Callable[[TestClient], httpx.Response]


def duplicate_email(client: TestClient) -> httpx.Response:
    create_ada(client)
    response: httpx.Response = client.post("/users", json={**VALID, "email": "ADA@example.com"})
    return response


def duplicate_email_by_patch(client: TestClient) -> httpx.Response:
    create_ada(client)
    other = create_ada(client, email="grace@example.com")
    response: httpx.Response = client.patch(
        f"/users/{other['id']}", json={"email": "ada@example.com"}
    )
    return response


ERROR_CASES: dict[str, tuple[Send, int, str]] = {
    "unknown-route": (lambda c: c.get("/nope"), 404, "not_found"),
    "wrong-method": (lambda c: c.delete("/users"), 405, "method_not_allowed"),
    "unknown-user": (lambda c: c.get(f"/users/{unknown_id()}"), 404, "user_not_found"),
    "malformed-id": (lambda c: c.get("/users/123"), 422, "validation_failed"),
    "invalid-body": (
        lambda c: c.post("/users", json={**VALID, "age": -1}),
        422,
        "validation_failed",
    ),
    "malformed-json": (
        lambda c: send_bytes(c, "POST", "/users", b"{"),
        422,
        "validation_failed",
    ),
    "unsupported-media-type": (
        lambda c: send_bytes(c, "POST", "/users", VALID_TEXT.encode(), "text/plain"),
        415,
        "unsupported_media_type",
    ),
    "email-taken": (duplicate_email, 409, "email_taken"),
    "email-taken-by-patch": (duplicate_email_by_patch, 409, "email_taken"),
}


@pytest.mark.parametrize(("send", "status", "code"), ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_every_error_is_problem_details(
    client: TestClient, send: Send, status: int, code: str
) -> None:
    assert_problem(send(client), status, code)


INTERNALS = (
    "Traceback",
    "SELECT",
    "INSERT",
    "UPDATE users",
    "sqlalchemy",
    "psycopg",
    "pymysql",
    "sqlite3",
    "IntegrityError",
    "Duplicate entry",
    "UNIQUE constraint",
    "uq_users_email",
    'File "',
)

LEAK_CASES: dict[str, Send] = {
    **{name: case[0] for name, case in ERROR_CASES.items()},
    "nul-in-name": lambda c: c.post("/users", json={**VALID, "name": "A\x00B"}),
    "nul-in-email": lambda c: c.post("/users", json={**VALID, "email": "a\x00@b.co"}),
    "huge-age": lambda c: send_bytes(c, "POST", "/users", body_with("age", "9" * 400)),
    "age-beyond-int64": lambda c: send_bytes(
        c, "POST", "/users", body_with("age", "9223372036854775808")
    ),
    "huge-name": lambda c: c.post("/users", json={**VALID, "name": "x" * 10_000}),
    "lone-surrogate": lambda c: send_bytes(c, "POST", "/users", body_with("name", r'"\ud800"')),
    "invalid-utf8": lambda c: send_bytes(c, "POST", "/users", b'{"name": "\xff"}'),
    "deep-json": lambda c: send_bytes(c, "POST", "/users", b"[" * DEEP + b"]" * DEEP),
}


@pytest.mark.parametrize("send", LEAK_CASES.values(), ids=LEAK_CASES.keys())
def test_error_answer_carries_no_internals(client: TestClient, send: Send) -> None:
    response = send(client)
    assert 400 <= response.status_code < 500, response.text
    answer = response.text + "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    leaked = [word for word in INTERNALS if word.lower() in answer.lower()]
    assert leaked == [], answer


HOSTILE_VALUES = {
    "nul": r'"\u0000"',
    "nul-inside": r'"Ada\u0000Lovelace"',
    "10k-string": '"' + "x" * 10_000 + '"',
    "10k-nul-string": '"' + r"\u0000" * 10_000 + '"',
    "object": '{"first": "Ada"}',
    "empty-object": "{}",
    "list": '["Ada"]',
    "empty-list": "[]",
    "1e309": "1e309",
    "-1e309": "-1e309",
    "1e308": "1e308",
    "tiny-float": "5e-324",
    "2**31": "2147483648",
    "2**63": "9223372036854775808",
    "-2**63-1": "-9223372036854775809",
    "2**64": "18446744073709551616",
    "400-digits": "9" * 400,
    "null": "null",
    "false": "false",
}


@pytest.mark.parametrize("raw_value", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
@pytest.mark.parametrize("field", ["name", "email", "age"])
@pytest.mark.parametrize("method", WRITE_METHODS)
def test_hostile_field_value_is_refused_not_a_server_error(
    client: TestClient, method: str, field: str, raw_value: str
) -> None:
    path = write_path(client, method)
    response = send_bytes(client, method, path, body_with(field, raw_value))
    assert_problem(response, 422, "validation_failed")


def test_thousands_of_errors_are_listed_twenty_at_a_time_with_their_count(
    client: TestClient,
) -> None:
    query = "&".join(f"x{number}=" for number in range(8310))
    response = client.get(f"/users?{query}")

    problem = response.json()
    assert response.status_code == 422, response.text
    assert len(problem["errors"]) == 20
    assert problem["error_count"] == 8310
    assert len(response.content) < 8 * 1024


def test_an_error_list_gives_its_count_even_when_short(client: TestClient) -> None:
    response = client.post("/users", json={"name": "", "email": "no", "age": 151})

    problem = response.json()
    assert response.status_code == 422
    assert problem["error_count"] == len(problem["errors"]) == 3
