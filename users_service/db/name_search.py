"""The index behind the `name` substring filter, on each database.

The filter means `LOWER(name) LIKE '%<the query, lower-cased>%'`, the plain
scan (crud.py); an index only narrows the rows the database tests, and the
same condition is applied to what it finds, so a search with the index
returns exactly what the scan returns.

- PostgreSQL: the GIN `pg_trgm` index on `lower(name)`
  (`ix_users_name_trgm`). The filter's own LIKE is written so that the
  index does not serve it (`lowered_name`): the index is asked for the
  query's first and last trigrams only (`restrict`), and a window
  (crud.list_users) walks the sort's index instead of reading the whole
  trigram index for a few rows.
- SQLite: `users_name_fts`, an FTS5 table with the `trigram` tokenizer over
  `users.name` (same rowids). FTS5 folds case per code point, and so finds
  every name in which the query occurs as the plain scan sees it (SQLite's
  LIKE ignores ASCII case, its lower() changes nothing else).
- MariaDB/MySQL: `user_name_trigrams`, a user's distinct trigrams of
  `LOWER(name)` computed by the database (triggers): a user whose lowered
  name contains the query has every trigram of the query. Keyed by
  (trigram, created_at, user_id) (migration 7c1e5a9d2b40): a page in the
  default order walks one trigram's holders in that order
  (walk_in_creation_order). No index on user_id (migration e4b7c19a2d63):
  the triggers delete a user's trigrams by that key, which made bulk
  loads on MariaDB write 4-5 times less (docs/design.md).

All three are asked for the users holding the query's first and last
trigrams (`search_values`; PostgreSQL: when pg_trgm indexes them as they
are).

Trigrams need three characters: shorter queries are served differently
(crud.list_users, docs/api.md).

The SQLite and MariaDB tables are made by the migration 51e32271d567 and
kept in step by triggers on users; they are not part of models.py's
metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    bindparam,
    func,
    literal_column,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from users_service.db.rendering import user_json
from users_service.models import AGE_NAME_INDEX, EMAIL_NAME_INDEX, NAME_WINDOW_INDEX, users

# SQLite: the trigger that indexes each new user's name, and the statement
# that indexes every user's name anew (a bulk load drops the one and runs
# the other: db/bulk.py).
SQLITE_INSERT_TRIGGER = "users_name_fts_insert"
SQLITE_REBUILD = "INSERT INTO users_name_fts (users_name_fts) VALUES ('rebuild')"

# Fewer characters than this in a name query: no trigram to look up.
TRIGRAM = 3

_tables = MetaData()
users_name_fts = Table("users_name_fts", _tables, Column("rowid", Integer), Column("name", String))
user_name_trigrams = Table(
    "user_name_trigrams",
    _tables,
    Column("trigram", String(3)),
    Column("created_at", users.c.created_at.type),
    Column("user_id", String(32)),
)


# MariaDB: a trigram held by at most this many users makes the index
# cheaper than the windows (whose users are each read by their random id to
# test the name), so the index is asked first.
RARE_TRIGRAM_USERS = 5_000


def rare_statement() -> Select[Any]:
    """MariaDB: how many users hold the trigram `trigram`, counted up to
    RARE_TRIGRAM_USERS + 1 (a walk of the trigram table's primary key)."""
    holders = (
        select(user_name_trigrams.c.user_id)
        .where(user_name_trigrams.c.trigram == bindparam("trigram", type_=String))
        .limit(bindparam("cap", type_=Integer))
        .subquery("holders")
    )
    return select(func.count()).select_from(holders)


def fts_candidates_statement() -> Select[Any]:
    """SQLite: how many users the FTS index finds for `name_phrase`
    (search_values), counted up to `cap`."""
    found = (
        select(users_name_fts.c.rowid)
        .where(users_name_fts.c.name.op("MATCH")(bindparam("name_phrase", type_=String)))
        .limit(bindparam("cap", type_=Integer))
        .subquery("found")
    )
    return select(func.count()).select_from(found)


class Explained(Executable, ClauseElement):
    """PostgreSQL: `EXPLAIN (FORMAT JSON)` of a statement: the planner's
    plan, with its estimate of the rows, without running it."""

    inherit_cache = False  # compiled once by db/statements.compiled

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement


@compiles(Explained)
def _explain(element: Explained, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


def estimate_statement(names: Sequence[str]) -> Explained:
    """PostgreSQL: the plan of reading the users the index finds for the
    values of `restrict` by their `names`; its "Plan Rows" is pg_trgm's
    estimate of how many (49,116 for `tim` at a million users, which 55,329
    hold; 164,938 for `son`, 166,076). 0.2 ms, where counting them (up to
    a cap) reads each from the table: 20 ms for 4,000, 120 ms for 55,000."""
    found = restrict(select(literal_column("1")).select_from(users), "postgresql", names)
    return Explained(found)


def has_index(dialect: str) -> bool:
    return dialect in ("sqlite", "postgresql", "mysql", "mariadb")


def like_pattern(name: str) -> str:
    """The LIKE pattern of the users whose lowered name contains `name`
    (lowered, its wildcards and escape character escaped with `\\`)."""
    escaped = name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def lowered_name(dialect: str) -> ColumnElement[str]:
    """LOWER(name) as the name filter tests it. PostgreSQL: `lower(name) ||
    ''`, which ix_users_name_trgm (on `lower(name)`) does not serve: a
    window's page walks the sort's index (with the plain form the planner
    intersected the window with the index, reading all of the query's
    trigrams, ten for `Ada Lovelace`, for a few rows: 33 ms against 1 ms),
    and a search asks the index for the trigrams of `restrict` only."""
    lowered: ColumnElement[str] = func.lower(users.c.name)
    if dialect == "postgresql":
        return lowered.concat(literal_column("''"))
    return lowered


def is_short(name: str) -> bool:
    """Whether a name query is too short for trigrams."""
    return len(name) < TRIGRAM


def search_values(dialect: str, name: str) -> dict[str, str]:
    """The values of `restrict` for a name query of TRIGRAM characters or
    more: the lowered query's first and last trigrams. Reading the users
    that hold both is far cheaper than reading every trigram's users (or,
    on SQLite, the whole query as a phrase, with every position), and the
    LIKE test removes those that hold both but not the query. Measured at a
    million users: docs/performance.md, "Name search"."""
    lowered = name.lower()
    if dialect == "postgresql":
        return _pg_trgm_values(lowered)
    ends = list(dict.fromkeys((lowered[:TRIGRAM], lowered[-TRIGRAM:])))
    if dialect == "sqlite":
        # FTS5 query: each trigram as a string (quotes doubled), both present.
        return {"name_phrase": " AND ".join('"' + end.replace('"', '""') + '"' for end in ends)}
    return {f"name_trigram_{i}": trigram for i, trigram in enumerate(ends)}


def _pg_trgm_values(lowered: str) -> dict[str, str]:
    """PostgreSQL: LIKE patterns of the first and last trigrams of `lowered`
    when both are three letters or digits (ASCII), which pg_trgm indexes as
    they are; otherwise the whole query's pattern, whose trigrams pg_trgm
    extracts itself (it indexes words padded with blanks, so a trigram
    with another character in it may give it little or nothing to look up:
    a read of the whole index)."""
    ends = dict.fromkeys((lowered[:TRIGRAM], lowered[-TRIGRAM:]))
    if not all(end.isascii() and end.isalnum() for end in ends):
        return {"name_trigram_0": like_pattern(lowered)}
    return {f"name_trigram_{i}": f"%{end}%" for i, end in enumerate(ends)}


# MariaDB/MySQL: for each sort, an index that holds the name beside the
# sort's key, and the filters whose columns it holds.
_NAME_HOLDING_INDEXES = {
    "created_at": (NAME_WINDOW_INDEX, frozenset({"name", "created_after", "created_before"})),
    "name": ("ix_users_name_id", frozenset({"name"})),
    "age": (AGE_NAME_INDEX, frozenset({"name", "min_age", "max_age"})),
    "email": (EMAIL_NAME_INDEX, frozenset({"name"})),
}


def window_index(dialect: str, sort_field: str, filters: Sequence[str]) -> str | None:
    """The index that finds the matches of a page by itself (read_found),
    if any: MariaDB/MySQL, a name query whose other filters the index
    tests too. Each sort has an index that holds the name beside its key:
    ix_users_name_id holds the name it sorts by, and three are MariaDB's
    own (models.MARIADB_ONLY_INDEXES: created_at, age and email, each with
    id and name). The users are tested in the index, and only the matches
    are read by id. Through the sort's plain index, which the optimizer
    picks when left to itself, MariaDB reads every user it walks by its
    random id to test the name: 12.8 ms against 1.1 ms for the 4,000-user
    window of `x` at a million users (docs/performance.md, "Name search");
    `Ada Lovelace` by email 348 against 10.7 ms (design.md, decision 7).
    In created_at order only a query of one or two characters comes here
    (its windows); longer ones walk the trigram table."""
    if dialect not in ("mysql", "mariadb") or sort_field not in _NAME_HOLDING_INDEXES:
        return None
    index, tested = _NAME_HOLDING_INDEXES[sort_field]
    if "name" not in filters or not tested.issuperset(filters):
        return None
    return index


def read_found(found: Select[Any], dialect: str, *, field: str, descending: bool) -> Select[Any]:
    """MariaDB: the users as JSON whose keys (`field`, id) `found` selects
    (a page's keys, tested and limited in window_index's index alone:
    "Using index"), as a derived table read before users (STRAIGHT_JOIN),
    then each user by id; the at most `limit` + 1 keys are sorted again.
    (The plain statement with the index forced has the names tested in the
    index too, by index condition pushdown, but MariaDB does not push the
    condition into a backward walk: `-created_at` took 13.9 ms, as
    without the index.)"""
    keys = found.subquery("found")
    order = [keys.c[field], keys.c.id]
    return (
        select(user_json(dialect))
        .select_from(keys.join(users, users.c.id == keys.c.id))
        .order_by(*(column.desc() if descending else column.asc() for column in order))
        .prefix_with("STRAIGHT_JOIN")
    )


def walks_in_order(dialect: str, sort_field: str) -> bool:
    """Whether the index is walked in the page's order (MariaDB, created_at
    either way): it then serves the page by itself, no window first."""
    return dialect in ("mysql", "mariadb") and sort_field == "created_at"


def restrict(statement: Select[Any], dialect: str, names: Sequence[str]) -> Select[Any]:
    """`statement` (on users) limited to the users the index finds for the
    values `search_values` gave, by their `names`: a superset of the
    matches, which the statement's own LIKE test then checks."""
    if dialect == "postgresql":
        return statement.where(
            *(
                func.lower(users.c.name).like(bindparam(name, type_=String), escape="\\")
                for name in names
            )
        )
    if dialect == "sqlite":
        found: Select[Any] = select(users_name_fts.c.rowid).where(
            users_name_fts.c.name.op("MATCH")(bindparam("name_phrase", type_=String))
        )
        return statement.where(literal_column("users.rowid").in_(found))
    # The users holding every trigram looked up, as a derived table that
    # MariaDB must compute first (DISTINCT keeps it from being merged,
    # STRAIGHT_JOIN from reading users before it): left to itself the
    # optimizer may look a user up for every row of the first trigram.
    first, joined = _holders(names)
    holders = (
        select(first.c.user_id)
        .select_from(joined)
        .where(first.c.trigram == bindparam("name_trigram_0", type_=String))
        .distinct()
        .subquery("holders")
    )
    return statement.select_from(holders.join(users, users.c.id == holders.c.user_id)).prefix_with(
        "STRAIGHT_JOIN"
    )


def _holders(names: Sequence[str]) -> tuple[Any, Any]:
    """MariaDB: the trigram table as `t0` (the holders of `name_trigram_0`),
    joined to one more alias for each other trigram looked up, by the whole
    key: the users holding every trigram."""
    count = sum(1 for name in names if name.startswith("name_trigram_"))
    tables = [user_name_trigrams.alias(f"t{i}") for i in range(count)]
    first = tables[0]
    joined: Any = first
    for i, table in enumerate(tables[1:], start=1):
        joined = joined.join(
            table,
            (table.c.trigram == bindparam(f"name_trigram_{i}", type_=String))
            & (table.c.created_at == first.c.created_at)
            & (table.c.user_id == first.c.user_id),
        )
    return first, joined


def walk_in_creation_order(
    statement: Select[Any], names: Sequence[str], *, descending: bool
) -> Select[Any]:
    """MariaDB, a page in created_at order (walks_in_order): `statement` (on
    users, not yet ordered) read while walking the holders of
    `name_trigram_0` in the order of the trigram table's key (trigram,
    created_at, user_id), each checked against the other trigrams by that
    key, then read from users by id and tested (the statement's LIKE) until
    the page is full: about `limit` x holders / matches rows of the trigram
    table, not every holder of both trigrams (docs/performance.md, "Name
    search"). Ordered by the walked key, which is the users' (created_at,
    id): MariaDB sorts when ordered by the users' columns."""
    first, joined = _holders(names)
    key = [first.c.created_at, first.c.user_id]
    return (
        statement.select_from(
            joined.join(
                users, (users.c.id == first.c.user_id) & (users.c.created_at == first.c.created_at)
            )
        )
        .where(first.c.trigram == bindparam("name_trigram_0", type_=String))
        .order_by(*(column.desc() if descending else column.asc() for column in key))
        .prefix_with("STRAIGHT_JOIN")
    )
