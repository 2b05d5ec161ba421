import random
import re
from datetime import UTC, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from tests.helpers import assert_problem, create_user, forged_cursor, parse_timestamp
from users_service import crud
from users_service.main import create_app
from users_service.models import UserListQuery
from users_service.pagination import SortOrder
from users_service.settings import load_settings

SORTS = ["created_at", "-created_at", "name", "-name", "email", "-email", "age", "-age"]
LINK_NEXT = re.compile(r'^<([^>]+)>; rel="next"$')
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def ids(users):
    return [user["id"] for user in users]


def expected_order(users, sort="created_at"):
    """The ids of `users` in `sort` order, ties broken by id, computed in Python."""
    field = sort.removeprefix("-")

    def key(user):
        value = parse_timestamp(user[field]) if field == "created_at" else user[field]
        return (value, user["id"])

    return ids(sorted(users, key=key, reverse=sort.startswith("-")))


def fetch_pages(client, **params):
    """Every page from the first to the last, following next_cursor."""
    pages = []
    cursor = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        response = client.get("/users", params=query)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 1000, "paging does not end"


def list_all(client, **params):
    return [user for page in fetch_pages(client, **params) for user in page["items"]]


def one_big_page(client, **params):
    response = client.get("/users", params={**params, "limit": 500})
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    return response.json()["items"]


def first_cursor(client, **params):
    response = client.get("/users", params={"limit": 2, **params})
    cursor = response.json()["next_cursor"]
    assert cursor is not None
    return cursor


def error_locs(problem):
    return [error["loc"] for error in problem["errors"]]


@pytest.fixture
def population(client):
    """25 users in random order with repeated names and ages."""
    rng = random.Random(20261127)
    names = ["ann", "anna", "bob", "carl", "dave"] * 5
    rng.shuffle(names)
    emails = [f"{rng.choice('abcdefgh')}{n:02d}@example.com" for n in rng.sample(range(99), 25)]
    ages = [rng.choice([0, 18, 30, 30, 42, 150]) for _ in range(25)]
    return [
        create_user(client, name=name, email=email, age=age)
        for name, email, age in zip(names, emails, ages, strict=True)
    ]


# The page


def test_empty_table_lists_no_items_and_no_next_page(client):
    response = client.get("/users")

    assert response.status_code == 200
    assert response.json() == {"items": [], "next_cursor": None}
    assert "link" not in response.headers


def test_page_has_items_and_next_cursor_and_no_total_by_default(client):
    users = [create_user(client) for _ in range(3)]

    response = client.get("/users")

    assert response.status_code == 200
    by_id = {user["id"]: user for user in users}
    assert response.json() == {
        "items": [by_id[user_id] for user_id in expected_order(users)],
        "next_cursor": None,
    }


def test_default_limit_is_50(client):
    users = [create_user(client) for _ in range(55)]

    first = client.get("/users").json()
    second = client.get("/users", params={"cursor": first["next_cursor"]}).json()

    assert len(first["items"]) == 50
    assert len(second["items"]) == 5
    assert second["next_cursor"] is None
    assert ids(first["items"] + second["items"]) == expected_order(users)


@pytest.mark.parametrize("limit", [1, 500])
def test_limit_bounds_are_accepted(client, limit):
    users = [create_user(client) for _ in range(3)]

    response = client.get("/users", params={"limit": limit})

    assert response.status_code == 200
    assert ids(response.json()["items"]) == expected_order(users)[:limit]


@pytest.mark.parametrize("limit", ["0", "501", "-1", "abc", "1.5", ""])
def test_limit_out_of_range_or_not_an_integer_is_422(client, limit):
    create_user(client)

    response = client.get("/users", params={"limit": limit})

    problem = assert_problem(response, 422, "validation_failed")
    assert ["query", "limit"] in error_locs(problem)


@pytest.mark.parametrize("parameter", ["foo", "offset", "page", "sort_by", "Limit"])
def test_unknown_query_parameter_is_422(client, parameter):
    response = client.get("/users", params={parameter: "1"})

    problem = assert_problem(response, 422, "validation_failed")
    assert ["query", parameter] in error_locs(problem)


@pytest.mark.parametrize("sort", ["id", "+name", "--age", "NAME", "created", "", "age,name"])
def test_unknown_sort_is_422(client, sort):
    response = client.get("/users", params={"sort": sort})

    problem = assert_problem(response, 422, "validation_failed")
    assert ["query", "sort"] in error_locs(problem)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("min_age", "-1"),
        ("min_age", "151"),
        ("max_age", "abc"),
        ("created_after", "yesterday"),
        ("created_before", "2026-13-01T00:00:00Z"),
        ("created_after", "2026"),
        ("created_before", "0.5"),
        ("created_before", "1700000000"),
        ("include_total", "maybe"),
        # Valid ISO 8601, but outside what a UTC timestamp can hold.
        ("created_after", "9999-12-31T23:59:59.999999-23:59"),
        ("created_before", "0001-01-01T00:00:00+14:00"),
    ],
)
def test_invalid_filter_is_422(client, parameter, value):
    response = client.get("/users", params={parameter: value})

    problem = assert_problem(response, 422, "validation_failed")
    assert ["query", parameter] in error_locs(problem)


# Paging


@pytest.mark.parametrize("limit", [1, 2, 5, 7, 24, 25, 26])
def test_following_next_cursor_visits_every_user_exactly_once(client, population, limit):
    pages = fetch_pages(client, limit=limit)

    visited = [user["id"] for page in pages for user in page["items"]]
    assert visited == expected_order(population)
    assert [len(page["items"]) for page in pages[:-1]] == [limit] * (len(pages) - 1)
    assert 1 <= len(pages[-1]["items"]) <= limit


@pytest.mark.parametrize("limit", [1, 2, 7])
def test_following_the_link_header_visits_every_user_exactly_once(client, population, limit):
    visited = []
    url = f"/users?limit={limit}"
    for _ in range(100):
        response = client.get(url)
        assert response.status_code == 200, response.text
        visited += ids(response.json()["items"])
        link = response.headers.get("link")
        if response.json()["next_cursor"] is None:
            assert link is None
            break
        match = LINK_NEXT.match(link or "")
        assert match, link
        url = match.group(1)
        assert parse_qs(urlsplit(url).query)["cursor"] == [response.json()["next_cursor"]]
    else:
        pytest.fail("paging does not end")

    assert visited == expected_order(population)


def test_link_header_keeps_sort_and_filters(client, population):
    response = client.get("/users", params={"limit": 2, "sort": "-age", "name": "an"})

    match = LINK_NEXT.match(response.headers["link"])
    assert match
    url = urlsplit(match.group(1))
    assert url.path == "/users"
    query = parse_qs(url.query)
    assert query["limit"] == ["2"]
    assert query["sort"] == ["-age"]
    assert query["name"] == ["an"]


@pytest.mark.parametrize("sort", SORTS)
def test_sorted_list_matches_python_order_with_ties_broken_by_id(client, population, sort):
    assert ids(one_big_page(client, sort=sort)) == expected_order(population, sort)


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("limit", [1, 3])
def test_paging_through_a_sort_gives_the_order_of_one_big_page(client, population, sort, limit):
    paged = list_all(client, sort=sort, limit=limit)

    assert ids(paged) == ids(one_big_page(client, sort=sort))
    assert len(set(ids(paged))) == len(population)


def test_default_sort_is_created_at(client, population):
    assert ids(one_big_page(client)) == ids(one_big_page(client, sort="created_at"))


@pytest.mark.parametrize("sort", ["age", "-age", "name", "-name"])
@pytest.mark.parametrize("limit", [1, 500])
def test_ties_are_broken_by_id_in_the_sort_direction(client, sort, limit):
    users = [create_user(client, name="Same", age=42) for _ in range(12)]
    expected = sorted(ids(users), reverse=sort.startswith("-"))

    assert ids(list_all(client, sort=sort, limit=limit)) == expected


def test_age_sort_is_numeric(client):
    ages = [100, 9, 10, 0, 150, 1, 99, 20, 2]
    for age in ages:
        create_user(client, age=age)

    assert [user["age"] for user in list_all(client, sort="age", limit=2)] == sorted(ages)
    assert [user["age"] for user in list_all(client, sort="-age", limit=2)] == sorted(
        ages, reverse=True
    )


# Cursors


def altered(cursor, position, change):
    char = cursor[position]
    replacement = BASE64URL[BASE64URL.index(char) ^ change]
    return cursor[:position] + replacement + cursor[position + 1 :]


def test_cursor_with_any_character_flipped_is_422(client, population):
    cursor = first_cursor(client)
    positions = [i for i, char in enumerate(cursor) if char != "."]

    accepted = []
    for position in positions:
        response = client.get(
            "/users", params={"limit": 2, "cursor": altered(cursor, position, 32)}
        )
        if response.status_code != 422:
            accepted.append((position, response.status_code))
        else:
            problem = assert_problem(response, 422, "validation_failed")
            assert error_locs(problem) == [["query", "cursor"]]

    assert accepted == []


@pytest.mark.parametrize(
    "alteration",
    [
        "lowest-bit-of-last-signature-char",
        "lowest-bit-of-last-payload-char",
        "padding-appended",
        "character-dropped",
        "character-appended",
        "segments-swapped",
        "signature-removed",
        "second-dot",
    ],
)
def test_altered_cursor_is_422(client, population, alteration):
    cursor = first_cursor(client)
    payload, signature = cursor.split(".")
    changed = {
        "lowest-bit-of-last-signature-char": lambda: altered(cursor, len(cursor) - 1, 1),
        "lowest-bit-of-last-payload-char": lambda: altered(cursor, len(payload) - 1, 1),
        "padding-appended": lambda: cursor + "==",
        "character-dropped": lambda: cursor[:-1],
        "character-appended": lambda: cursor + "A",
        "segments-swapped": lambda: f"{signature}.{payload}",
        "signature-removed": lambda: payload,
        "second-dot": lambda: f"{cursor}.{signature}",
    }[alteration]()
    assert changed != cursor

    response = client.get("/users", params={"limit": 2, "cursor": changed})

    problem = assert_problem(response, 422, "validation_failed")
    assert error_locs(problem) == [["query", "cursor"]]


@pytest.mark.parametrize(
    "payload",
    [
        {"value": "2026-11-30T00:00:00Z", "id": "5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10"},
        [1700000000, "5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10"],
        ["2026-11-30T00:00:00Z", "not-a-uuid"],
        ["0001-01-01T00:00:00+14:00", "5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10"],
        ["2026-11-30T00:00:00Z"],
    ],
    ids=["dict", "int-timestamp", "non-uuid-id", "timestamp-out-of-range", "short"],
)
def test_validly_signed_cursor_holding_no_key_is_422(client, settings, payload):
    """Whoever knows the secret (the built-in one is public) can sign anything."""
    order = SortOrder.parse("created_at")
    context = UserListQuery().filter_fingerprint()
    cursor = forged_cursor(payload, order, context, settings.cursor_secret.get_secret_value())

    response = client.get("/users", params={"cursor": cursor})

    problem = assert_problem(response, 422, "validation_failed")
    assert ["query", "cursor"] in error_locs(problem)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        ".",
        "abc",
        "not a cursor",
        "WyJ4IiwiNmYxYzJhOGUtNGI3ZC00ZTJhLTljM2YtMGQ1ZThhN2IxYzJkIl0.AAAAAAAAAAAAAAAAAAAAAA",
        "é.é",
        "A" * 1025,
    ],
    ids=["empty", "dot", "word", "spaces", "forged", "non-ascii", "too-long"],
)
def test_made_up_cursor_is_422(client, population, cursor):
    response = client.get("/users", params={"cursor": cursor})

    problem = assert_problem(response, 422, "validation_failed")
    assert error_locs(problem) == [["query", "cursor"]]


@pytest.mark.parametrize(
    ("made_with", "sent_with"),
    [
        ({"sort": "name"}, {"sort": "-name"}),
        ({"sort": "name"}, {}),
        ({}, {"sort": "-created_at"}),
        ({"sort": "age"}, {"sort": "email"}),
        ({"min_age": 10}, {"min_age": 11}),
        ({"min_age": 10}, {}),
        ({}, {"name": "an"}),
        ({"name": "an"}, {"name": "ann"}),
        ({}, {"email": "a00@example.com"}),
        ({"max_age": 100}, {"max_age": 100, "min_age": 0}),
        ({"created_after": "2000-01-01T00:00:00Z"}, {"created_before": "2100-01-01T00:00:00Z"}),
        ({"created_after": "2000-01-01T00:00:00Z"}, {"created_after": "2000-01-01T00:00:01Z"}),
    ],
)
def test_cursor_sent_with_another_sort_or_other_filters_is_422(
    client, population, made_with, sent_with
):
    cursor = first_cursor(client, limit=1, **made_with)

    response = client.get("/users", params={"limit": 1, "cursor": cursor, **sent_with})

    problem = assert_problem(response, 422, "validation_failed")
    assert error_locs(problem) == [["query", "cursor"]]


def test_cursor_sent_again_with_the_same_sort_and_filters_gives_the_same_page(client, population):
    params = {"limit": 3, "sort": "-age", "min_age": 1}
    cursor = first_cursor(client, **params)

    first = client.get("/users", params={**params, "cursor": cursor})
    again = client.get("/users", params={**params, "cursor": cursor})

    assert first.status_code == 200
    assert first.json() == again.json()


# Filters


def test_email_filter_is_exact_and_case_insensitive(client):
    ada = create_user(client, email="ada@example.com")
    create_user(client, email="ada@example.org")
    create_user(client, email="bada@example.com")
    create_user(client, email="ada.l@example.com")

    for value in ["ada@example.com", "ADA@Example.COM", " ada@example.com "]:
        response = client.get("/users", params={"email": value})
        assert response.status_code == 200
        assert ids(response.json()["items"]) == [ada["id"]], value


def test_email_filter_matching_no_one_is_an_empty_page(client):
    create_user(client, email="ada@example.com")

    response = client.get("/users", params={"email": "ada@example"})

    assert response.status_code == 200
    assert response.json()["items"] == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("ada", ["Ada Lovelace", "ADAM", "Nevada"]),
        ("ADA", ["Ada Lovelace", "ADAM", "Nevada"]),
        ("love", ["Ada Lovelace"]),
        ("_", ["a_b"]),
        ("%", ["100%"]),
        ("a_b", ["a_b"]),
        ("0%", ["100%"]),
        ("\\", ["back\\slash"]),
        ("[a]", ["[a]"]),
        ("x", ["axb"]),
        ("zzz", []),
    ],
)
def test_name_filter_is_a_case_insensitive_literal_substring(client, query, expected):
    for name in ["Ada Lovelace", "ADAM", "Nevada", "Grace", "100%", "1000", "a_b", "axb"]:
        create_user(client, name=name)
    for name in ["back\\slash", "[a]", "a"]:
        create_user(client, name=name)

    response = client.get("/users", params={"name": query, "limit": 500})

    assert response.status_code == 200
    assert sorted(user["name"] for user in response.json()["items"]) == sorted(expected)


@pytest.mark.parametrize(
    ("params", "expected_ages"),
    [
        ({"min_age": 11}, [11, 12, 13, 14]),
        ({"max_age": 13}, [10, 11, 12, 13]),
        ({"min_age": 11, "max_age": 13}, [11, 12, 13]),
        ({"min_age": 12, "max_age": 12}, [12]),
        ({"min_age": 13, "max_age": 11}, []),
        ({"min_age": 0, "max_age": 150}, [10, 11, 12, 13, 14]),
    ],
)
def test_age_filters_are_inclusive(client, params, expected_ages):
    for age in range(10, 15):
        create_user(client, age=age)

    items = list_all(client, sort="age", limit=2, **params)

    assert [user["age"] for user in items] == expected_ages


@pytest.mark.parametrize("probe_rows", [0, 1_000_000], ids=["sort-index", "range-index"])
@pytest.mark.parametrize("sort", ["created_at", "-created_at", "age", "-name"])
def test_range_filters_page_alike_whichever_index_serves_them(
    client, monkeypatch, probe_rows, sort
):
    """crud.wide_ranges (SQLite): a range matching more than RANGE_PROBE_ROWS
    users is tested row by row while the sort's index is walked; fewer, its
    own index is read. Either way, the same pages."""
    monkeypatch.setattr(crud, "RANGE_PROBE_ROWS", probe_rows)
    population = [create_user(client, age=age) for age in (20, 35, 35, 50, 64, 80, 90, 91, 120)]
    by_creation = sorted(population, key=lambda user: parse_timestamp(user["created_at"]))
    after = by_creation[1]["created_at"]
    expected = [user for user in by_creation[2:] if 35 <= user["age"] <= 90]

    items = list_all(client, sort=sort, limit=2, min_age=35, max_age=90, created_after=after)

    assert ids(items) == expected_order(expected, sort)


def as_query_time(timestamp, style):
    moment = parse_timestamp(timestamp).astimezone(UTC)
    if style == "Z":
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if style == "+00:00":
        return moment.isoformat()
    if style == "naive":
        return moment.replace(tzinfo=None).isoformat()
    return moment.astimezone(timezone(timedelta(hours=2))).isoformat()


@pytest.mark.parametrize("style", ["Z", "+00:00", "naive", "+02:00"])
def test_created_after_and_before_are_exclusive(client, style):
    users = [create_user(client) for _ in range(6)]
    ordered = sorted(users, key=lambda user: parse_timestamp(user["created_at"]))
    after = ordered[1]["created_at"]
    before = ordered[4]["created_at"]

    def between(user):
        return (
            parse_timestamp(after) < parse_timestamp(user["created_at"]) < parse_timestamp(before)
        )

    response = client.get(
        "/users",
        params={
            "created_after": as_query_time(after, style),
            "created_before": as_query_time(before, style),
        },
    )
    only_after = client.get("/users", params={"created_after": as_query_time(after, style)})
    only_before = client.get("/users", params={"created_before": as_query_time(before, style)})

    expected = {u["id"] for u in users if between(u)}
    assert expected
    assert response.status_code == 200
    assert set(ids(response.json()["items"])) == expected
    assert set(ids(only_after.json()["items"])) == {
        u["id"] for u in users if parse_timestamp(u["created_at"]) > parse_timestamp(after)
    }
    assert set(ids(only_before.json()["items"])) == {
        u["id"] for u in users if parse_timestamp(u["created_at"]) < parse_timestamp(before)
    }


def test_created_filters_are_combined_with_the_other_filters(client):
    users = [
        create_user(client, name=name, age=age)
        for name, age in [("ann", 20), ("bob", 20), ("ann", 20), ("ann", 60), ("ann", 20)]
    ]
    after, before = users[0]["created_at"], users[-1]["created_at"]
    expected = [
        user
        for user in users
        if parse_timestamp(after) < parse_timestamp(user["created_at"]) < parse_timestamp(before)
        and user["name"] == "ann"
        and user["age"] <= 30
    ]

    response = client.get(
        "/users",
        params={"created_after": after, "created_before": before, "name": "ann", "max_age": 30},
    )

    assert response.status_code == 200
    assert ids(response.json()["items"]) == expected_order(expected)


def test_filters_are_combined_with_and(client):
    match = create_user(client, name="Ann Smith", email="ann@example.com", age=30)
    create_user(client, name="Ann Jones", email="ann.j@example.com", age=30)
    create_user(client, name="Ann Smith", email="other@example.com", age=50)
    create_user(client, name="Bob Smith", email="bob@example.com", age=30)

    response = client.get(
        "/users", params={"name": "smith", "min_age": 25, "max_age": 35, "email": "ANN@example.com"}
    )
    broader = client.get("/users", params={"name": "smith", "min_age": 25, "max_age": 35})

    assert ids(response.json()["items"]) == [match["id"]]
    assert sorted(user["name"] for user in broader.json()["items"]) == ["Ann Smith", "Bob Smith"]


def test_paging_with_filters_visits_every_match_once(client, population):
    expected = [u for u in population if "an" in u["name"] and u["age"] >= 18]

    for sort in ["created_at", "-age", "name"]:
        filters = {"sort": sort, "name": "AN", "min_age": 18}
        paged = ids(list_all(client, limit=2, **filters))
        assert paged == ids(one_big_page(client, **filters))
        assert sorted(paged) == sorted(ids(expected))


# include_total


@pytest.mark.parametrize(
    ("params", "matches"),
    [
        ({}, lambda user: True),
        ({"name": "ann"}, lambda user: "ann" in user["name"]),
        ({"min_age": 30}, lambda user: user["age"] >= 30),
        ({"name": "zzz"}, lambda user: False),
    ],
    ids=["no-filter", "name", "min-age", "no-match"],
)
def test_include_total_counts_every_match_not_just_the_page(client, population, params, matches):
    expected_total = sum(1 for user in population if matches(user))

    pages = fetch_pages(client, limit=4, include_total="true", **params)

    assert [page["total"] for page in pages] == [expected_total] * len(pages)
    assert sum(len(page["items"]) for page in pages) == expected_total


@pytest.mark.parametrize("params", [{}, {"include_total": "false"}])
def test_total_is_absent_unless_asked_for(client, params):
    create_user(client)

    response = client.get("/users", params=params)

    assert response.status_code == 200
    assert "total" not in response.json()


# Paging while others write


@pytest.mark.parametrize("sort", ["created_at", "-created_at", "name", "-age"])
def test_paging_while_users_are_created_and_deleted_sees_every_survivor_once(client, sort):
    rng = random.Random(7)
    initial = [
        create_user(client, name=rng.choice(["ann", "bob", "cid"]), age=rng.choice([20, 40, 60]))
        for _ in range(30)
    ]
    seen: list[str] = []
    deleted: set[str] = set()
    cursor = None
    for _ in range(100):
        params = {"limit": 5, "sort": sort, **({"cursor": cursor} if cursor else {})}
        response = client.get("/users", params=params)
        assert response.status_code == 200, response.text
        seen += ids(response.json()["items"])
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
        for _ in range(2):
            create_user(
                client, name=rng.choice(["ann", "bob", "cid"]), age=rng.choice([20, 40, 60])
            )
        seen_alive = [user_id for user_id in seen if user_id not in deleted]
        for victim in {seen_alive[-1], rng.choice(seen_alive)}:
            assert client.delete(f"/users/{victim}").status_code == 204
            deleted.add(victim)
    else:
        pytest.fail("paging does not end")

    assert len(deleted) >= 6
    assert len(seen) == len(set(seen))
    survivors = {user["id"] for user in initial} - deleted
    assert survivors <= set(seen)


def rotated_app(settings, cursor_secret):
    """Another app on the same database, with CURSOR_SECRET=`cursor_secret`."""
    return create_app(
        load_settings(
            database_url=settings.database_url,
            environment="test",
            log_level="WARNING",
            cursor_secret=cursor_secret,
        )
    )


def test_a_cursor_issued_before_a_cursor_secret_rotation_still_pages_after_it(client, settings):
    users = [create_user(client) for _ in range(3)]
    apps = [rotated_app(settings, secret) for secret in ("old", "new,old", "new")]
    try:
        with TestClient(apps[0]) as before:
            first = before.get("/users", params={"limit": 2}).json()
        with TestClient(apps[1]) as during:
            second = during.get("/users", params={"limit": 2, "cursor": first["next_cursor"]})
            fresh = during.get("/users", params={"limit": 2}).json()["next_cursor"]
        with TestClient(apps[2]) as after:  # the old secret removed
            stale = after.get("/users", params={"limit": 2, "cursor": first["next_cursor"]})
            signed_by_new = after.get("/users", params={"limit": 2, "cursor": fresh})
    finally:
        for app in apps:
            app.state.database.engine.dispose()

    assert second.status_code == 200, second.text
    assert [user["id"] for user in second.json()["items"]] == [users[2]["id"]]
    assert signed_by_new.status_code == 200, signed_by_new.text
    assert_problem(stale, 422, "validation_failed")
