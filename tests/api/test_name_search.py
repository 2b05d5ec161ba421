"""The name filter through the name index returns what a plain scan returns.

The index (SQLite: FTS5 trigram table; MariaDB: trigram side table;
PostgreSQL: pg_trgm) only narrows the rows tested; the plain scan is the
statement without it (`LOWER(name) LIKE '%query%'`, the filter's meaning
before the index). The window a name query reads first is made tiny here,
so that pages come from the window, from its end (short queries) and from
the index alike.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, text

from tests.helpers import create_user
from users_service import crud
from users_service.db import name_search
from users_service.models import NAME_MAX_LENGTH, UserListQuery
from users_service.pagination import SortOrder
from users_service.seed import seed_users
from users_service.transfer import import_file

# Cased letters whose lower case differs between Python and the databases
# (İ, ẞ, ǅ, Kelvin K, Å sign), characters LIKE and FTS5 treat specially,
# quotes, several scripts, and a character outside the BMP.
ALPHABET = [
    *"aAbBnNsSoO  ",
    *"%_\\'\"*-.()^:",
    *"éÉßẞİıΣσςǅǄǆKÅåÆæ",  # noqa: RUF001 - look-alikes on purpose
    *"日本ж😀ﬀ",
]
SORTS = ("created_at", "-created_at", "-name", "age")


@pytest.fixture
def tiny_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crud, "WINDOWS", (4, 21))
    monkeypatch.setattr(crud, "SEARCH_WINDOWS", (4, 21, 60, 200))
    # MariaDB: trigrams held by more than 3 users go through the windows first.
    monkeypatch.setattr(name_search, "RARE_TRIGRAM_USERS", 3)


def random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(length))


def random_name(rng: random.Random) -> str:
    length = rng.choice([1, 2, 3, 5, 8, 13, 30, NAME_MAX_LENGTH])
    name = random_text(rng, length).strip()
    return name or "x"


def searched(client: Any, name: str, sort: str = "created_at", limit: int = 50) -> list[str]:
    """The ids the API lists for `name`, following next_cursor to the end."""
    found: list[str] = []
    params: dict[str, Any] = {"name": name, "sort": sort, "limit": limit}
    for _ in range(1000):
        response = client.get("/users", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        found += [user["id"] for user in page["items"]]
        if page["next_cursor"] is None:
            return found
        params["cursor"] = page["next_cursor"]
    raise AssertionError("more than 1000 pages")


def scanned(engine: Engine, name: str, sort: str = "created_at") -> list[str]:
    """The ids a plain scan finds for `name`, in the order `sort`."""
    values = crud.filter_values(UserListQuery(name=name))
    statement = crud.page_statement(
        tuple(values), SortOrder.parse(sort), after=False, dialect=engine.dialect.name
    ).params(crud.page_values(values, 100_000, None))
    with engine.connect() as connection:
        return [orjson.loads(row[0])["id"] for row in connection.execute(statement)]


def assert_index_in_step(engine: Engine) -> None:
    """The name index holds exactly what the users table says."""
    dialect = engine.dialect.name
    with engine.begin() as connection:
        if dialect == "sqlite":
            # Compares the FTS index with its content table; raises on a difference.
            check = (
                "INSERT INTO users_name_fts (users_name_fts, rank) VALUES ('integrity-check', 1)"
            )
            connection.execute(text(check))
        elif dialect in ("mysql", "mariadb"):
            expected = {
                (lowered[i : i + 3], created_at, user_id)
                for lowered, created_at, user_id in connection.execute(
                    text("SELECT LOWER(name), created_at, id FROM users")
                )
                for i in range(len(lowered) - 2)
            }
            stored = connection.execute(
                text("SELECT trigram, created_at, user_id FROM user_name_trigrams")
            )
            assert {tuple(row) for row in stored} == expected


def test_search_returns_what_a_plain_scan_returns_on_random_names(client, app, tiny_window):
    rng = random.Random(13)
    names = [random_name(rng) for _ in range(150)]
    names += ["Ada Lovelace", "ADA LOVELACE", "Lovelace, Ada", "100% _real_"] * 5
    for start in range(0, len(names), 100):
        chunk = names[start : start + 100]
        body = {
            "users": [
                {"name": name, "email": f"n{start + i}@example.com", "age": rng.randint(0, 150)}
                for i, name in enumerate(chunk)
            ]
        }
        assert client.post("/users/batch", json=body).status_code == 201
    engine = app.state.database.engine
    assert_index_in_step(engine)

    def case_changed(value: str) -> str:
        return "".join(rng.choice((c.lower(), c.upper(), c)) for c in value)

    queries = ["ada", "lovelace", "Ada Lovelace", "% _", "_", "%", "\\", '"', "'", "zqxj"]
    for _ in range(50):
        name = rng.choice(names)
        start = rng.randrange(len(name))
        piece = name[start : start + rng.choice([1, 2, 3, 4, 7, 20, NAME_MAX_LENGTH])]
        queries.append(case_changed(piece).strip() or "a")
    queries += [random_text(rng, rng.choice([1, 2, 3, 4, 6])).strip() or "b" for _ in range(15)]
    queries.append(random_text(rng, NAME_MAX_LENGTH).strip()[:NAME_MAX_LENGTH] or "c")
    matched = 0
    for query in queries:
        sort = rng.choice(SORTS)
        expected = scanned(engine, query, sort)
        matched += bool(expected)
        assert searched(client, query, sort, rng.choice([2, 50])) == expected, query
    assert matched > len(queries) // 2  # the comparison is not between empty lists
    # Both ways of the default order (MariaDB walks its trigram table's key
    # then, and tests a short query's windows in an index of its own), over
    # several pages of common and rarer names.
    for sort in ("created_at", "-created_at"):
        for query in ("ada", "ADA LOVELACE", "ace, a", "a", "Ad"):
            expected = scanned(engine, query, sort)
            assert len(expected) >= 5, query
            for limit in (2, 50):
                assert searched(client, query, sort, limit) == expected, (query, sort, limit)


def test_every_write_keeps_the_name_index_in_step(client, app, tiny_window, tmp_path: Path):
    engine = app.state.database.engine

    def check(*queries: str) -> None:
        assert_index_in_step(engine)
        for query in queries:
            assert searched(client, query) == scanned(engine, query), query

    ada = create_user(client, name="Ada Lovelace")
    check("lovelace", "ada")
    batch = [
        {"name": f"Grace Hopper {i}", "email": f"g{i}@example.com", "age": 85} for i in range(3)
    ]
    created = client.post("/users/batch", json={"users": batch}).json()["items"]
    check("hopper", "per 1")
    replaced = {"name": "Edsger Dijkstra", "email": "ada@example.com", "age": 72}
    assert client.put(f"/users/{ada['id']}", json=replaced).status_code == 200
    check("lovelace", "dijkstra")
    patched = client.patch(f"/users/{created[0]['id']}", json={"name": "Barbara Liskov"})
    assert patched.status_code == 200
    assert client.patch(f"/users/{created[1]['id']}", json={"age": 3}).status_code == 200
    check("hopper", "liskov")
    assert client.delete(f"/users/{created[2]['id']}").status_code == 204
    check("hopper", "per 2")
    source = tmp_path / "users.csv"
    source.write_text(
        "name,email,age\nAlan Turing,alan@example.com,41\nKen Thompson,ken@example.com,80\n"
    )
    summary, _ = import_file(engine, source, progress=False)
    assert summary.imported == 2
    check("turing", "thompson")
    seed_users(engine, 30, progress=False)  # a bulk load: SQLite rebuilds the index after it
    check("lovelace", "rossum", "hopper", "an", "a")
    create_user(client, name="Niklaus Wirth", email="niklaus@example.com")
    check("wirth")  # and indexes each new user again
    # About 23 of the 30 seeded names hold an "a" (at most 10 once in ten
    # million runs): the short query's windows compared more than a few.
    assert len(searched(client, "a")) > 10


@pytest.mark.parametrize("sort", ["name", "-name", "email"])
def test_a_common_name_missing_from_the_first_windows_of_its_order_pages_like_a_scan(
    client, app, tiny_window, monkeypatch: pytest.MonkeyPatch, sort: str
):
    """80 of 140 users match, none of the first 30 in name order either way:
    SQLite walks on past its first windows (the index holds more candidates
    than the next window) rather than read every match from the index; the
    pages are a plain scan's on every database."""
    asked: list[bool] = []
    more_than = crud._Candidates.more_than

    async def spied(*args: Any) -> bool:
        asked.append(await more_than(*args))
        return asked[-1]

    monkeypatch.setattr(crud._Candidates, "more_than", spied)
    names = ["Aaa Aaa"] * 30 + ["Mid Johnson"] * 80 + ["Zzz Zzz"] * 30
    body = {
        "users": [
            {"name": name, "email": f"{sort}-{i}@example.com", "age": 30}
            for i, name in enumerate(names)
        ]
    }
    assert client.post("/users/batch", json=body).status_code == 201
    engine = app.state.database.engine

    expected = scanned(engine, "son", sort)

    assert len(expected) == 80
    for limit in (2, 50):
        assert searched(client, "son", sort, limit) == expected, limit
    if engine.dialect.name == "sqlite" and sort != "email":
        assert True in asked


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_the_next_window_is_read_only_when_it_may_fill_the_page(dialect: str):
    """crud._may_fill on PostgreSQL and SQLite: at the rate of matches seen
    so far. `Ada Lovelace` (0.3%) finds about 3 of the first 1,000 users:
    4,000 more would hold about 12 of the 48 still wanted, so the index is
    asked at once."""
    assert not crud._may_fill(dialect, 3, 1_000, (4_000,), 50)
    assert not crud._may_fill(dialect, 0, 1_000, (4_000,), 50)
    assert crud._may_fill(dialect, 11, 1_000, (4_000,), 50)  # 44 expected, 40 wanted
    assert not crud._may_fill(dialect, 10, 1_000, (4_000,), 50)  # 40 expected, 41 wanted
    assert not crud._may_fill(dialect, 40, 5_000, (), 50)  # no window left


def test_mariadb_reads_every_window_before_the_index():
    """MariaDB reads each window's users by their random id, and a common
    trigram's holders cost it more: it reads the next window whenever one
    follows."""
    assert crud._may_fill("mariadb", 0, 1_000, (4_000,), 50)
    assert not crud._may_fill("mariadb", 0, 5_000, (), 50)
