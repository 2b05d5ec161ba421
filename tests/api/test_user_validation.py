"""What the service accepts as a user's fields, and how it stores them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.helpers import ADA, create_ada, write_path

VALID = ADA
WRITE_METHODS = ["POST", "PUT", "PATCH"]


def send_text(client: TestClient, method: str, path: str, text: str) -> httpx.Response:
    response: httpx.Response = client.request(
        method, path, content=text.encode(), headers={"Content-Type": "application/json"}
    )
    return response


def body_with(field: str, raw_value: str) -> str:
    """A valid body as JSON text, with `field` set to the JSON text `raw_value`."""
    others = json.dumps({key: value for key, value in VALID.items() if key != field})
    return f'{others[:-1]}, "{field}": {raw_value}}}'


def assert_invalid(response: httpx.Response, loc: list[str | int] | None = None) -> None:
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_failed"
    if loc is not None:
        assert loc in [error["loc"] for error in problem["errors"]], problem["errors"]


def stored(client: TestClient, user: dict[str, Any]) -> dict[str, Any]:
    response = client.get(f"/users/{user['id']}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("  Ada  ", "Ada"),
        ("\tAda Lovelace\r\n", "Ada Lovelace"),
        ("\u3000Ada\u00a0", "Ada"),
        ("\u2003Ada \u2028", "Ada"),
        ("\x1cAda\x85", "Ada"),
    ],
)
def test_name_surrounding_whitespace_is_trimmed(client: TestClient, sent: str, kept: str) -> None:
    user = create_ada(client, name=sent)
    assert user["name"] == kept
    assert stored(client, user)["name"] == kept


@pytest.mark.parametrize(
    "name",
    [
        "x" * 200,
        "\U0001f600" * 200,
        "e\u0301" * 100,
        "é" * 200,
    ],
    ids=["ascii", "emoji", "combining-marks", "accented"],
)
def test_name_of_200_code_points_is_accepted(client: TestClient, name: str) -> None:
    user = create_ada(client, name=name)
    assert user["name"] == name
    assert stored(client, user)["name"] == name


def test_name_of_200_code_points_padded_with_whitespace_is_accepted(client: TestClient) -> None:
    user = create_ada(client, name="   " + "x" * 200 + "\t ")
    assert user["name"] == "x" * 200


@pytest.mark.parametrize(
    "name",
    ["x" * 201, "\U0001f600" * 201, "e\u0301" * 100 + "x", "x" * 10_000],
    ids=["ascii", "emoji", "combining-marks", "10k"],
)
@pytest.mark.parametrize("method", WRITE_METHODS)
def test_name_longer_than_200_code_points_is_refused(
    client: TestClient, method: str, name: str
) -> None:
    response = client.request(method, write_path(client, method), json={**VALID, "name": name})
    assert_invalid(response, ["body", "name"])


@pytest.mark.parametrize("name", ["", " ", "   ", "\t\n", "\u3000"])
def test_blank_name_is_refused(client: TestClient, name: str) -> None:
    assert_invalid(client.post("/users", json={**VALID, "name": name}), ["body", "name"])


@pytest.mark.parametrize(
    "name",
    [
        "\x00",
        "Ada\x00Lovelace",
        "\x00Ada",
        "Ada\x00",
        "Ada\x01Lovelace",
        "Ada\x1bLovelace",
        "Ada\x1fLovelace",
        "Ada\x7fLovelace",
        "Ada\x80Lovelace",
        "Ada\x85Lovelace",
        "Ada\x9fLovelace",
    ],
)
@pytest.mark.parametrize("method", WRITE_METHODS)
def test_name_with_control_character_is_refused(client: TestClient, method: str, name: str) -> None:
    response = client.request(method, write_path(client, method), json={**VALID, "name": name})
    assert_invalid(response, ["body", "name"])


# Lone surrogates sent as JSON escapes: valid JSON syntax, so the field (not
# the body) is what is refused. A high one alone, a low one alone, a low one
# before a high one (a pair in the wrong order), a high one at the end.
LONE_SURROGATES = {
    "name": [r'"\ud800"', r'"Ada\udfffLovelace"', r'"\ude00\ud83d"', r'"Ada\ud83d"'],
    "email": [r'"ada\ud800@example.com"', r'"\ude00\ud83dada@example.com"'],
}


@pytest.mark.parametrize(
    ("field", "raw_value"),
    [(field, raw) for field, values in LONE_SURROGATES.items() for raw in values],
)
@pytest.mark.parametrize("method", WRITE_METHODS)
def test_field_with_lone_surrogate_is_refused_naming_the_field(
    client: TestClient, method: str, field: str, raw_value: str
) -> None:
    response = send_text(client, method, write_path(client, method), body_with(field, raw_value))
    assert_invalid(response)
    assert [error["loc"] for error in response.json()["errors"]] == [["body", field]]


def test_unknown_field_named_with_a_lone_surrogate_is_refused_naming_it_escaped(
    client: TestClient,
) -> None:
    response = send_text(client, "POST", "/users", body_with("\\ud800", "1"))
    assert_invalid(response)
    assert [error["loc"] for error in response.json()["errors"]] == [["body", "\\ud800"]]


@pytest.mark.parametrize(
    "raw_age",
    ["NaN", "Infinity", "1e309", '"a" "b"'],
    ids=["nan", "infinity", "float-out-of-range", "not-json"],
)
def test_body_with_a_lone_surrogate_is_still_refused_when_it_is_not_json(
    client: TestClient, raw_age: str
) -> None:
    # The surrogate makes the body take the second reading: it must refuse
    # what orjson refuses, as unparsable JSON.
    body = body_with("name", r'"\ud800"')[:-1] + f', "nickname": {raw_age}}}'
    response = send_text(client, "POST", "/users", body)
    assert_invalid(response)
    assert [error["loc"] for error in response.json()["errors"]] == [["body"]]


def test_body_with_a_lone_surrogate_and_invalid_utf8_is_refused_as_unparsable(
    client: TestClient,
) -> None:
    body = body_with("name", r'"\ud800"').encode()[:-1] + b', "x": "\xff"}'
    response = client.post("/users", content=body, headers={"Content-Type": "application/json"})
    assert_invalid(response)
    assert [error["loc"] for error in response.json()["errors"]] == [["body"]]


def test_surrogate_pair_escape_is_the_character_it_encodes(client: TestClient) -> None:
    response = send_text(client, "POST", "/users", body_with("name", r'"\ud83d\ude00 Ada"'))
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "\U0001f600 Ada"


@pytest.mark.parametrize(
    "name",
    [
        "\U0001f600 Ada \U0001f469\u200d\U0001f4bb",
        "Zoë Ågård-Øster",
        "Jose\u0301 Núñez",
        "\U0001d504\U0001d521\U0001d51e",
        "李小龍",
        "Ἀριστοτέλης",
        "\U00020000\U0002a6d6",
    ],
)
def test_name_with_non_bmp_or_accented_characters_round_trips_exactly(
    client: TestClient, name: str
) -> None:
    user = create_ada(client, name=name)
    assert user["name"] == name
    assert stored(client, user)["name"] == name
    listed = client.get("/users").json()["items"]
    assert [item["name"] for item in listed] == [name]


@pytest.mark.parametrize("field", ["name", "email"])
@pytest.mark.parametrize("raw_value", ["123", "1.5", "true", "[]", "{}", '["Ada"]'])
def test_name_and_email_must_be_json_strings(
    client: TestClient, field: str, raw_value: str
) -> None:
    response = send_text(client, "POST", "/users", body_with(field, raw_value))
    assert_invalid(response, ["body", field])


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("Ada.Lovelace@Example.COM", "ada.lovelace@example.com"),
        ("ADA@EXAMPLE.COM", "ada@example.com"),
        ("ÉVA@Example.com", "éva@example.com"),
        ("e\u0301va@example.com", "éva@example.com"),
        ("ada@BÜCHER.de", "ada@bücher.de"),
    ],
)
def test_email_is_normalized_then_lower_cased(client: TestClient, sent: str, kept: str) -> None:
    user = create_ada(client, email=sent)
    assert user["email"] == kept
    assert stored(client, user)["email"] == kept


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ada@example.com", "ADA@EXAMPLE.COM"),
        ("Ada@Example.com", "aDA@eXAMPLE.COM"),
        ("éva@example.com", "ÉVA@example.com"),
        ("éva@example.com", "e\u0301va@example.com"),
    ],
)
def test_second_user_with_an_equal_email_is_a_conflict(
    client: TestClient, first: str, second: str
) -> None:
    create_ada(client, email=first)
    response = client.post("/users", json={**VALID, "name": "Other", "email": second})
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "email_taken"
    assert len(client.get("/users").json()["items"]) == 1


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_changing_email_to_another_users_email_in_other_case_is_a_conflict(
    client: TestClient, method: str
) -> None:
    create_ada(client, email="ada@example.com")
    other = create_ada(client, email="grace@example.com")
    response = client.request(
        method, f"/users/{other['id']}", json={**VALID, "email": "ADA@Example.Com"}
    )
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "email_taken"
    assert stored(client, other)["email"] == "grace@example.com"


@pytest.mark.parametrize(
    "email", ["Ada <ada@example.com>", "<ada@example.com>", '"Ada Lovelace" <ada@example.com>']
)
def test_email_in_display_name_form_is_refused(client: TestClient, email: str) -> None:
    assert_invalid(client.post("/users", json={**VALID, "email": email}), ["body", "email"])


@pytest.mark.parametrize(
    "email",
    [
        "",
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "ada@@example.com",
        "ada lovelace@example.com",
        "ada@exa mple.com",
        "ada@-example.com",
    ],
)
def test_syntactically_invalid_email_is_refused(client: TestClient, email: str) -> None:
    assert_invalid(client.post("/users", json={**VALID, "email": email}), ["body", "email"])


def email_of_length(length: int) -> str:
    """A valid-looking address of `length` characters: 64-character local part,
    then labels of 63 characters."""
    domain = list("b" * (length - 64 - 1 - len(".com")))
    for position in range(63, len(domain), 64):
        domain[position] = "."
    email = "A" * 64 + "@" + "".join(domain) + ".com"
    assert len(email) == length
    return email


def test_email_of_254_characters_is_accepted_and_stored_lower_cased(client: TestClient) -> None:
    email = email_of_length(254)
    user = create_ada(client, email=email)
    assert user["email"] == email.lower()
    assert stored(client, user)["email"] == email.lower()


@pytest.mark.parametrize("length", [255, 300, 2_000])
def test_email_longer_than_254_characters_is_refused(client: TestClient, length: int) -> None:
    response = client.post("/users", json={**VALID, "email": email_of_length(length)})
    assert_invalid(response, ["body", "email"])


@pytest.mark.parametrize(
    "email",
    [
        "ada\x00@example.com",
        "\x00ada@example.com",
        "ada@example.com\x00",
        "ada@exam\x00ple.com",
        "a\x01da@example.com",
        "ada\x7f@example.com",
        "ada\x85@example.com",
        "ada@example.com\n",
        "\tada@example.com",
    ],
)
@pytest.mark.parametrize("method", WRITE_METHODS)
def test_email_with_control_character_is_refused(
    client: TestClient, method: str, email: str
) -> None:
    response = client.request(method, write_path(client, method), json={**VALID, "email": email})
    assert_invalid(response, ["body", "email"])


@pytest.mark.parametrize("age", [0, 1, 36, 150])
def test_age_from_0_to_150_is_accepted(client: TestClient, age: int) -> None:
    user = create_ada(client, age=age)
    assert user["age"] == age
    assert stored(client, user)["age"] == age


@pytest.mark.parametrize(
    "raw_age",
    [
        '"36"',
        "36.5",
        "36.0",
        "3.6e1",
        "true",
        "false",
        "null",
        "-1",
        "151",
        "32768",
        "100000000000000000000",
        "-100000000000000000000",
        "[36]",
        '{"years": 36}',
    ],
)
@pytest.mark.parametrize("method", WRITE_METHODS)
def test_age_that_is_not_a_json_integer_from_0_to_150_is_refused(
    client: TestClient, method: str, raw_age: str
) -> None:
    response = send_text(client, method, write_path(client, method), body_with("age", raw_age))
    assert_invalid(response, ["body", "age"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("emial", "ada@example.com"),
        ("id", "5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10"),
        ("version", 7),
        ("created_at", "2026-11-27T15:49:01.123456Z"),
        ("Name", "Ada"),
    ],
)
@pytest.mark.parametrize("method", WRITE_METHODS)
def test_unknown_field_is_refused(client: TestClient, method: str, field: str, value: Any) -> None:
    path = write_path(client, method)
    response = client.request(method, path, json={**VALID, field: value})
    assert_invalid(response, ["body", field])
    if method == "POST":
        assert client.get("/users").json()["items"] == []
    else:
        assert client.get(path).json()["version"] == 1


def test_misspelled_field_alone_is_refused_by_patch(client: TestClient) -> None:
    user = create_ada(client)
    response = client.patch(f"/users/{user['id']}", json={"emial": "grace@example.com"})
    assert_invalid(response, ["body", "emial"])
    assert stored(client, user)["email"] == "ada@example.com"


@pytest.mark.parametrize("missing", ["name", "email", "age"])
def test_put_requires_every_field(client: TestClient, missing: str) -> None:
    user = create_ada(client)
    body = {key: value for key, value in VALID.items() if key != missing}
    response = client.put(f"/users/{user['id']}", json=body)
    assert_invalid(response, ["body", missing])
    assert response.json()["errors"][0]["type"] == "missing"
    assert stored(client, user) == user


@pytest.mark.parametrize("missing", ["name", "email", "age"])
def test_post_requires_every_field(client: TestClient, missing: str) -> None:
    body = {key: value for key, value in VALID.items() if key != missing}
    assert_invalid(client.post("/users", json=body), ["body", missing])


def test_patch_does_not_require_every_field(client: TestClient) -> None:
    user = create_ada(client)
    response = client.patch(f"/users/{user['id']}", json={"age": 37})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert (updated["name"], updated["email"], updated["age"]) == (
        user["name"],
        user["email"],
        37,
    )


@pytest.mark.parametrize("field", ["name", "email", "age"])
def test_patch_with_null_for_a_field_is_refused(client: TestClient, field: str) -> None:
    user = create_ada(client)
    response = client.patch(f"/users/{user['id']}", json={field: None})
    assert_invalid(response, ["body", field])
    assert stored(client, user) == user


@pytest.mark.parametrize("field", ["name", "email", "age"])
def test_patch_validates_a_field_by_the_same_rules(client: TestClient, field: str) -> None:
    user = create_ada(client)
    invalid = {"name": " \t ", "email": "Ada <ada@example.com>", "age": 151}[field]
    response = client.patch(f"/users/{user['id']}", json={field: invalid})
    assert_invalid(response, ["body", field])
    assert stored(client, user) == user
