"""HEAD is served wherever GET is (RFC 9110 §9.3.2): same status and headers, no body."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.helpers import READER, WRITER, create_ada

# Headers that differ between any two answers, or (metrics) between two scrapes.
VARYING = {"x-request-id", "content-length"}


@pytest.mark.parametrize(
    "path",
    [
        "/users/{id}",
        "/users/{unknown}",
        "/users/not-a-uuid",
        "/users",
        "/users?limit=1",
        "/users?limit=0",
        "/healthz",
        "/readyz",
        "/metrics",
    ],
)
def test_head_answers_what_get_does_without_the_body(client: TestClient, path: str) -> None:
    ada = create_ada(client)
    create_ada(client, email="second@example.com")
    url = path.format(id=ada["id"], unknown="6d285d42-3bcb-4896-bfc8-8cd88223e05b")

    got = client.get(url)
    head = client.head(url)

    assert head.status_code == got.status_code != 405
    assert head.content == b""
    assert {k: v for k, v in head.headers.items() if k not in VARYING} == {
        k: v for k, v in got.headers.items() if k not in VARYING
    }
    if path != "/metrics":
        assert head.headers["content-length"] == got.headers["content-length"]


def test_head_of_a_user_honours_if_none_match(client: TestClient) -> None:
    ada = create_ada(client)
    etag = client.get(f"/users/{ada['id']}").headers["etag"]

    head = client.head(f"/users/{ada['id']}", headers={"If-None-Match": etag})

    assert (head.status_code, head.headers["etag"]) == (304, etag)


def test_head_is_a_read_for_api_keys(keyed: TestClient) -> None:
    assert keyed.head("/users").status_code == 401
    assert keyed.head("/users", headers=READER).status_code == 200
    assert keyed.head("/users", headers=WRITER).status_code == 200


def test_allow_lists_head_and_the_document_lists_no_head_operation(
    client: TestClient, app: FastAPI
) -> None:
    refused = client.put("/healthz")

    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"
    assert client.head("/healthz").status_code == 200
    operations = {method for item in app.openapi()["paths"].values() for method in item}
    assert "head" not in operations and "get" in operations
