"""The database work on users, as plain async functions of a connection.

They know nothing of HTTP: they take validated models and values, and raise
the domain errors of errors.py (`UserNotFound`, `EmailTaken`,
`VersionMismatch`). Statements are SQLAlchemy Core built from the `users`
table and compiled once per database (db/statements.py). Reads select the
user as the API's JSON object, rendered by the database itself; writes know
the values they wrote and render them in Python, the same way
(db/rendering.py).

Uniqueness of emails is left to the database's unique index; its refusal
becomes `EmailTaken` (no check-then-insert).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Integer,
    Select,
    String,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op
from sqlalchemy.sql.util import ClauseAdapter

from users_service import changes, idempotency
from users_service.changes import ChangeSource
from users_service.db import name_search
from users_service.db.database import Connection
from users_service.db.errors import DatabaseUnavailable, UniqueViolation
from users_service.db.rendering import UserRecord, json_value, to_record, user_json
from users_service.db.statements import Row, compiled
from users_service.errors import EmailTaken, UserNotFound, VersionMismatch
from users_service.models import EDITABLE_FIELDS, UserFields, UserListQuery, users
from users_service.pagination import SortOrder, typed_key
from users_service.preconditions import VersionCondition


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class UserJSON:
    """A user as the database rendered it: the JSON text and its version."""

    json: str
    version: int


# --------------------------------------------------------------------------
# Single users


async def create_user(
    *, connection: Connection, data: UserFields, source: ChangeSource
) -> UserRecord:
    user_id = uuid.uuid4()
    now = utcnow()
    values = {
        "id": user_id,
        **data.model_dump(include=set(EDITABLE_FIELDS)),
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    user = to_record(values)
    change = changes.created_row(source, values, user)
    try:
        if connection.dialect.name == "postgresql":  # one round trip for both
            await changes.insert_user_with_change(
                connection=connection, values=values, change=change
            )
            return user
        statement = compiled(connection, "insert_user", lambda: insert(users))
        await connection.run(statement, values)
    except UniqueViolation:
        raise EmailTaken() from None
    await changes.append(connection=connection, rows=[change])
    return user


def _user_by_id(dialect: str, *, for_update: bool) -> Select[Any]:
    statement = select(user_json(dialect), users.c.version).where(
        users.c.id == bindparam("user_id")
    )
    return statement.with_for_update() if for_update else statement


async def get_user(*, connection: Connection, user_id: uuid.UUID) -> UserJSON:
    dialect = connection.dialect.name
    statement = compiled(connection, "get_user", lambda: _user_by_id(dialect, for_update=False))
    row = await connection.one(statement, {"user_id": user_id})
    if row is None:
        raise UserNotFound()
    return UserJSON(row[0], row[1])


def _update_statement(fields: tuple[str, ...], *, checked: bool) -> Any:
    statement = (
        update(users)
        .where(users.c.id == bindparam("user_id"))
        .values({field: bindparam(f"new_{field}") for field in fields})
    )
    return statement.where(users.c.version == bindparam("old_version")) if checked else statement


def _changing_update(fields: tuple[str, ...], *, checked: bool) -> Any:
    """PostgreSQL: set `fields` (bound as `new_<field>`) of the user
    `user_id`, and move its version on, only if one of them changes (and,
    when `checked`, its version is one of `expected_versions`); returns the
    user's columns and `changed`, the names of the fields that changed as a
    JSON array (text). The old values come from the row locked in the same
    statement, so the comparison is with the version being replaced."""
    old = (
        select(users.c.id, users.c.version, *(users.c[field] for field in fields))
        .where(users.c.id == bindparam("user_id"))
        .with_for_update()
        .subquery("old")
    )
    new = {field: bindparam(f"new_{field}", type_=users.c[field].type) for field in fields}
    differs = {field: old.c[field].is_distinct_from(new[field]) for field in fields}
    names = [
        case((differs[field], literal(orjson.dumps(field).decode())))
        for field in EDITABLE_FIELDS
        if field in differs
    ]
    changed = literal("[") + func.concat_ws(",", *names) + literal("]")
    statement = (
        update(users)
        .where(users.c.id == old.c.id, or_(*differs.values()))
        .values({**new, "updated_at": bindparam("new_updated_at"), "version": old.c.version + 1})
        .returning(*users.c, changed.label("changed"))
    )
    if checked:
        expected = bindparam("expected_versions", type_=ARRAY(Integer))
        statement = statement.where(old.c.version == any_(expected))
    return statement


async def _update_in_one_statement(
    connection: Connection,
    user_id: uuid.UUID,
    fields: Mapping[str, Any],
    expected: VersionCondition | None,
    source: ChangeSource,
) -> UserRecord | None:
    """PostgreSQL: the update and its change in one statement, one round
    trip (_changing_update); the user after it, or None when it wrote
    nothing (no such user, a version If-Match does not accept, or nothing
    to change), for update_user to tell which."""
    checked = expected is not None and not expected.matches_any
    names = tuple(sorted(fields))
    values: dict[str, Any] = {
        "user_id": user_id,
        "new_updated_at": (now := utcnow()),
        **{f"new_{name}": value for name, value in fields.items()},
    }
    if checked:
        assert expected is not None
        values["expected_versions"] = sorted(expected.versions)
    text = await changes.update_user_returning_change(
        connection=connection,
        update_user=partial(_changing_update, names, checked=checked),
        key=("changing_update", names, checked),
        values=values,
        source=source,
        at=now,
    )
    return None if text is None else orjson.loads(text)


# PostgreSQL updates a user only if the version it read is still there
# (below); each attempt that finds another version means another write to
# that user committed in between. One succeeds every time, so only a user
# written this often by others runs out (503, to be retried): 50 PATCHes of
# one user at once (PostgreSQL, in process) took at most 32 attempts each.
UPDATE_ATTEMPTS = 100


async def update_user(
    *,
    connection: Connection,
    user_id: uuid.UUID,
    fields: Mapping[str, Any],
    expected: VersionCondition | None,
    source: ChangeSource,
) -> UserRecord:
    """Apply `fields`; a change that changes nothing keeps the version (and
    appends no change to the log).

    Concurrent writers and the If-Match check cannot interleave. SQLite and
    MariaDB lock the row while it is compared (SQLite: the write
    transaction holds the database's write lock). PostgreSQL first tries
    the whole write as one statement, which compares the fields and the
    version with the row it locks (_changing_update: one round trip, not
    two). When that writes nothing, it reads without a lock and
    updates only if the version read is still there, reading again
    otherwise. Each statement is whole on its own (Database.statements),
    and the row is never locked across a round trip.
    """
    dialect = connection.dialect.name
    checked = dialect == "postgresql"
    if checked and fields:
        try:
            written = await _update_in_one_statement(connection, user_id, fields, expected, source)
        except UniqueViolation:
            raise EmailTaken() from None
        if written is not None:
            return written
        # Nothing written: no such user, a refused version or no change.
        # The statements below tell which (and write if a change came in).
    read = compiled(
        connection,
        "get_user" if checked else "get_user_for_update",
        lambda: _user_by_id(dialect, for_update=not checked),
    )
    for _ in range(UPDATE_ATTEMPTS if checked else 1):
        row = await connection.one(read, {"user_id": user_id})
        if row is None:
            raise UserNotFound()
        if expected is not None and not expected.matches(row[1]):
            raise VersionMismatch()
        user: UserRecord = orjson.loads(row[0])
        changed = {
            field: value
            for field, value in fields.items()
            if user[field] != json_value(field, value)
        }
        if not changed:
            return user
        now = utcnow()
        values = {**changed, "updated_at": now, "version": row[1] + 1}
        columns = tuple(sorted(values))
        key = ("update_user", columns, checked)
        update_statement = partial(_update_statement, columns, checked=checked)
        bound = {"user_id": user_id, **{f"new_{name}": value for name, value in values.items()}}
        user = {**user, **{field: json_value(field, value) for field, value in values.items()}}
        change = changes.updated_row(source, user_id, now, tuple(changed), user)
        try:
            if checked:  # one statement for the update and its change
                if await changes.update_user_with_change(
                    connection=connection,
                    update_user=update_statement,
                    key=key,
                    values={**bound, "old_version": row[1]},
                    change=change,
                ):
                    return user
                continue  # another write came first: read again
            await connection.run(compiled(connection, key, update_statement), bound)
        except UniqueViolation:
            raise EmailTaken() from None
        await changes.append(connection=connection, rows=[change])
        return user
    raise DatabaseUnavailable("the user kept changing while it was updated")


async def delete_user(
    *,
    connection: Connection,
    user_id: uuid.UUID,
    expected: VersionCondition | None,
    source: ChangeSource,
) -> None:
    """Delete the user, and erase their name and email from their earlier
    changes and from stored Idempotency-Key answers."""
    statement = compiled(
        connection,
        "user_version_for_update",
        lambda: select(users.c.version).where(users.c.id == bindparam("user_id")).with_for_update(),
    )
    row = await connection.one(statement, {"user_id": user_id})
    if row is None:
        raise UserNotFound()
    if expected is not None and not expected.matches(row[0]):
        raise VersionMismatch()
    statement = compiled(
        connection, "delete_user", lambda: delete(users).where(users.c.id == bindparam("user_id"))
    )
    if not await connection.run(statement, {"user_id": user_id}):
        raise UserNotFound()
    # It takes the order lock, held until the commit: the rest is short.
    await changes.erase_user(connection=connection, user_id=user_id)
    # After the order lock: on MariaDB the look-up locks a gap of the links'
    # index, where a keyed create holding the order lock may insert its link
    # (a deadlock: 2-4 of 600 keyed creates racing 300 deletes were 503, none
    # since; 139 with the scan before the index).
    await idempotency.erase_answers_with(connection=connection, user_id=user_id)
    change = changes.deleted_row(source, user_id, row[0], utcnow())
    await changes.append(connection=connection, rows=[change])


# --------------------------------------------------------------------------
# Batches


@asynccontextmanager
async def _savepoint(connection: Connection, name: str) -> AsyncIterator[None]:
    """Undo only the block when it raises, leaving the transaction usable."""
    await connection.run(
        compiled(connection, ("savepoint", name), lambda: text(f"SAVEPOINT {name}"))
    )
    try:
        yield
    except BaseException:
        rollback = compiled(
            connection, ("rollback_to", name), lambda: text(f"ROLLBACK TO SAVEPOINT {name}")
        )
        await connection.run(rollback)
        raise
    release = compiled(connection, ("release", name), lambda: text(f"RELEASE SAVEPOINT {name}"))
    await connection.run(release)


async def create_users(
    *, connection: Connection, data: Sequence[UserFields], source: ChangeSource
) -> list[UserRecord]:
    """Create every user or none, in the order given.

    The same email twice in `data` is refused before the database is asked
    (naming the later one); an email another user already has is refused by
    the unique index, and then looked up to name the item that collided.
    """
    first_seen: dict[str, int] = {}
    for index, item in enumerate(data):
        if item.email in first_seen:
            raise EmailTaken(loc=("body", "users", index, "email"))
        first_seen[item.email] = index
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            **item.model_dump(include=set(EDITABLE_FIELDS)),
            # One microsecond apart: listing by created_at keeps the order sent.
            "created_at": (created := now + timedelta(microseconds=index)),
            "updated_at": created,
            "version": 1,
        }
        for index, item in enumerate(data)
    ]
    statement = compiled(connection, "insert_user", lambda: insert(users))
    try:
        async with _savepoint(connection, "batch_insert"):
            await connection.run_many(statement, rows)
    except UniqueViolation:
        collided = await _first_taken(connection=connection, emails=[row["email"] for row in rows])
        raise EmailTaken(
            loc=("body", "users") if collided is None else ("body", "users", collided, "email")
        ) from None
    records = [to_record(row) for row in rows]
    log = [changes.created_row(source, row, user) for row, user in zip(rows, records, strict=True)]
    await changes.append(connection=connection, rows=log)
    return records


async def _first_taken(*, connection: Connection, emails: Sequence[str]) -> int | None:
    """The index of the first email another user has (after a batch collided)."""
    statement = compiled(
        connection,
        "email_taken",
        lambda: select(users.c.id).where(users.c.email == bindparam("email")),
    )
    for index, email in enumerate(emails):
        if await connection.one(statement, {"email": email}) is not None:
            return index
    return None


# --------------------------------------------------------------------------
# Listing

# The range filters of UserListQuery, by the column each bounds: the sort's
# index bounds a range on the sort's own column.
_RANGE_FILTERS = {
    "min_age": "age",
    "max_age": "age",
    "created_after": "created_at",
    "created_before": "created_at",
}

# The filters of UserListQuery, each with the condition it adds (a range
# filter's, of its column's expression; the name's, of the lowered name as
# name_search.lowered_name writes it: _conditions).
_FILTERS: dict[str, Any] = {
    "email": lambda: users.c.email == bindparam("email"),
    "name": lambda lowered: lowered.like(bindparam("name", type_=String), escape="\\"),
    "min_age": lambda column: column >= bindparam("min_age"),
    "max_age": lambda column: column <= bindparam("max_age"),
    "created_after": lambda column: column > bindparam("created_after"),
    "created_before": lambda column: column < bindparam("created_before"),
}


def filter_values(query: UserListQuery) -> dict[str, Any]:
    """The values of the filters the query uses, by bind name."""
    values = {name: getattr(query, name) for name in _FILTERS if getattr(query, name) is not None}
    if "name" in values:
        values["name"] = name_search.like_pattern(values["name"])
    return values


def page_values(
    filters: Mapping[str, Any], limit: int, after: tuple[Any, uuid.UUID] | None
) -> dict[str, Any]:
    """The values of page_statement's parameters: the filters' (filter_values),
    one row more than `limit`, and the key to start after."""
    values = {**filters, "limit": limit + 1}
    if after is not None:
        values["after_value"], values["after_id"] = after
    return values


def _conditions(
    filters: Sequence[str], unindexed: Collection[str] = (), dialect: str = ""
) -> list[ColumnElement[bool]]:
    """The filters' conditions on `dialect`; a range on a column in
    `unindexed` tests `+column` (SQLite's unary plus), which no index serves."""
    conditions = []
    for name in filters:
        column_name = _RANGE_FILTERS.get(name)
        if name == "name":
            conditions.append(_FILTERS[name](name_search.lowered_name(dialect)))
            continue
        if column_name is None:
            conditions.append(_FILTERS[name]())
            continue
        column: ColumnElement[Any] = users.c[column_name]
        if column_name in unindexed:
            column = UnaryExpression(column, operator=custom_op("+"), type_=column.type)
        conditions.append(_FILTERS[name](column))
    return conditions


def page_statement(
    filters: Sequence[str],
    order: SortOrder,
    *,
    after: bool,
    dialect: str,
    until: bool = False,
    search: Sequence[str] = (),
    unindexed: Collection[str] = (),
    sort_found: bool = False,
) -> Select[Any]:
    """The SELECT for one page: the users as JSON, one more than `limit` (to
    see whether more follow), from the key in `after_value`, `after_id`;
    `until`: up to the key in `until_value`, `until_id` (a window's end;
    on MariaDB, a short name query's matches found in the window index
    first: name_search.window_index);
    `search`: the name index's values (name_search.search_values) too;
    `unindexed`: columns whose range filters no index may serve
    (wide_ranges);
    `sort_found` (PostgreSQL, with `search`): every user the index finds is
    read, then sorted (a derived table with OFFSET 0, which the planner
    keeps apart). Left to itself the planner walks the sort's index when
    it expects the matches spread evenly over the order, which a window
    has just shown they are not: `Tim` by name, all its 55,000 matches last
    in that order at a million users, walked 944,000 users (958 ms).
    Without `search`, a name filter on MariaDB is tested in the index that
    holds the name beside the sort's key (name_search.window_index)."""
    walk = bool(search) and name_search.walks_in_order(dialect, order.field)
    window_index = None if search else name_search.window_index(dialect, order.field, filters)
    # PostgreSQL sorts the name index's finds (all of them: 3,056 for `Ada
    # Lovelace` at a million users) and renders the JSON of each before the
    # sort, which it deems cheap: the page's users are rendered after the
    # limit instead (a derived table), 14 ms instead of 27.5 ms of the
    # statement's execution, measured there on a loaded machine.
    late = dialect == "postgresql" and bool(search)
    columns = users.c if late else [user_json(dialect)]
    if window_index is not None:
        columns = [users.c[order.field], users.c.id]
    statement = select(*columns).where(*_conditions(filters, unindexed, dialect))
    if search and not walk:
        statement = name_search.restrict(statement, dialect, search)
    if after:
        key = (
            bindparam("after_value", type_=users.c[order.field].type),
            bindparam("after_id", type_=users.c.id.type),
        )
        statement = statement.where(order.after(key, dialect))
    if until:
        end = (
            bindparam("until_value", type_=users.c[order.field].type),
            bindparam("until_id", type_=users.c.id.type),
        )
        statement = statement.where(order.up_to(end, dialect))
    if walk:
        statement = name_search.walk_in_creation_order(
            statement, search, descending=order.descending
        )
    elif sort_found:
        found = statement.offset(literal_column("0")).subquery("found")
        adapter = ClauseAdapter(found)
        statement = select(*found.c).order_by(
            *(adapter.traverse(column) for column in order.order_by())
        )
    else:
        statement = statement.order_by(*order.order_by())
    statement = statement.limit(bindparam("limit", type_=Integer))
    if window_index is not None:
        return name_search.read_found(
            statement.with_hint(users, f"FORCE INDEX ({window_index})", dialect),
            dialect,
            field=order.field,
            descending=order.descending,
        )
    if late:
        page = ClauseAdapter(statement.subquery("page"))
        return select(page.traverse(user_json(dialect))).order_by(
            *(page.traverse(column) for column in order.order_by())
        )
    return statement


# A name query is first tried on the users that follow the cursor in the
# page's order, a window at a time (a small one, then a larger one): when
# matches are common the page fills there, cheaper than reading every
# match from the index. Measured at a million users in docs/performance.md
# ("Name search").
WINDOWS = (1_000, 4_000)
# SQLite: a name query of three characters or more that has found no match
# yet walks on through larger windows while the index would give more
# candidates than the next window holds (_Candidates): each way
# costs about one read per user it goes through, so the page costs at most
# a few times the cheaper of the two. Before, a query matching many users
# but none in the first windows of its order read all of them from the
# index: at a million users, `name=son&sort=name` took 131 ms, now 10 ms
# (docs/performance.md, "Name search in every order", which also says why
# MariaDB does not do this yet).
SEARCH_WINDOWS = (*WINDOWS, 16_000, 64_000)
# PostgreSQL: a name query whose windows did not fill its page reads every
# user the index finds and sorts them (page_statement's sort_found) when
# the planner expects at most this many (name_search.estimate_statement),
# about 60 ms at a million users; more, and the planner chooses, as it
# walks the sort's index quickly when the matches are many (`son` by
# name: 17.5 ms, where sorting its 166,000 matches would take 200 ms).
# The estimate of a query of two trigrams multiplies their shares as if
# they were independent and may be far too low (`ovela`: 15-100 for 1,100
# at 20,000 users); the planner plans on the same estimate, so it would
# then sort the index's finds anyway.
SORTED_CANDIDATES_MAX = 64_000


def window_page_statement(
    filters: Sequence[str], order: SortOrder, *, after: bool, dialect: str
) -> Select[Any]:
    """The page (one more than `limit` users matching the filters, as JSON)
    among the `window_size` users after the key in `after_value`,
    `after_id` (or from the start), in one statement: the window is a
    derived table (a walk of the sort's index), stopped as soon as the page
    is full. PostgreSQL's first window: no statement to find the window's
    end first (page_statement with `until`), which only a second window
    needs."""
    window = select(*users.c)
    if after:
        key = (
            bindparam("after_value", type_=users.c[order.field].type),
            bindparam("after_id", type_=users.c.id.type),
        )
        window = window.where(order.after(key, dialect))
    window = window.order_by(*order.order_by()).limit(bindparam("window_size", type_=Integer))
    rows = ClauseAdapter(window.subquery("window"))
    return (
        select(rows.traverse(user_json(dialect)))
        .where(*(rows.traverse(condition) for condition in _conditions(filters, (), dialect)))
        .order_by(*(rows.traverse(column) for column in order.order_by()))
        .limit(bindparam("limit", type_=Integer))
    )


def window_end_statement(order: SortOrder, *, after: bool, dialect: str) -> Select[Any]:
    """The user `window_skip` + 1 rows after the key in `after_value`,
    `after_id` (or from the start), as JSON: found by walking the sort's
    index only."""
    walk = select(users.c.id)
    if after:
        key = (
            bindparam("after_value", type_=users.c[order.field].type),
            bindparam("after_id", type_=users.c.id.type),
        )
        walk = walk.where(order.after(key, dialect))
    walk = walk.order_by(*order.order_by()).limit(1).offset(bindparam("window_skip", type_=Integer))
    return select(user_json(dialect)).where(users.c.id == walk.scalar_subquery())


def may_scan(query: UserListQuery, order: SortOrder) -> bool:
    """Whether a listing may read far more index entries than the page it
    returns: a count, a name substring, or a range filter on another column
    than the sort's (the sort's index is walked until a page matches, or
    the filter's index is walked and sorted). An exact email finds at most
    one user through its unique index, whatever else is asked."""
    if query.email is not None:
        return False
    if query.include_total or query.name is not None:
        return True
    return any(
        getattr(query, name) is not None and column != order.field
        for name, column in _RANGE_FILTERS.items()
    )


# SQLite keeps no histogram (sqlite_stat1 only): for a range on another
# column than the sort's it takes that column's index and sorts every
# match, 340-620 ms at a million users for ages 60-90 (a fifth of the
# table), where walking the sort's index and testing each row fills a page
# of 50 after about 250 rows (0.2 ms). The walk loses when matches are
# rare: 150 ms when none of a million rows matches. So the range's own
# index first counts its matches, up to RANGE_PROBE_ROWS + 1 entries (0.2
# ms): more than that, the sort's index is walked (at most limit * N /
# RANGE_PROBE_ROWS rows: 25,000, 4 ms, at N = 1M); fewer, the range's index
# and a sort of at most that many rows (4 ms). docs/design.md, decision 7.
RANGE_PROBE_ROWS = 2_000


def range_probe_statement(filters: Sequence[str]) -> Select[Any]:
    """How many users the range `filters` (all on one column) match,
    counted up to `cap` (a walk of that column's index)."""
    matches = (
        select(literal_column("1"))
        .select_from(users)
        .where(*_conditions(filters))
        .limit(bindparam("cap", type_=Integer))
        .subquery("matches")
    )
    return select(func.count()).select_from(matches)


def range_probes(
    dialect: str, values: Mapping[str, Any], order: SortOrder
) -> list[tuple[str, tuple[str, ...]]]:
    """The ranges wide_ranges counts: each column other than the sort's
    that range filters in `values` bound (SQLite only), with those filters."""
    if dialect != "sqlite":
        return []
    columns = sorted({_RANGE_FILTERS[name] for name in values if name in _RANGE_FILTERS})
    return [
        (column, tuple(name for name in values if _RANGE_FILTERS.get(name) == column))
        for column in columns
        if column != order.field
    ]


async def wide_ranges(
    connection: Connection, values: Mapping[str, Any], order: SortOrder
) -> frozenset[str]:
    """The columns (range_probes) whose range filters match more than
    RANGE_PROBE_ROWS users: a page is cheaper found by walking the sort's
    index than by reading the range's."""
    wide = set()
    for column, filters in range_probes(connection.dialect.name, values, order):
        statement = compiled(
            connection, ("range_probe", filters), partial(range_probe_statement, filters)
        )
        row = await connection.one(
            statement, {**{name: values[name] for name in filters}, "cap": RANGE_PROBE_ROWS + 1}
        )
        if row is not None and row[0] > RANGE_PROBE_ROWS:
            wide.add(column)
    return frozenset(wide)


def count_statement(
    filters: Sequence[str], *, dialect: str = "", search: Sequence[str] = ()
) -> Select[Any]:
    statement = select(func.count()).select_from(users).where(*_conditions(filters, (), dialect))
    if search:
        statement = name_search.restrict(statement, dialect, search)
    return statement


@dataclass
class Page:
    users: list[str]  # each user's JSON
    more: bool
    total: int | None
    # Where the next page starts when it is not after the last user shown:
    # a short name query stops at the end of its window (list_users).
    resume_after: tuple[Any, uuid.UUID] | None = None


async def list_users(
    *,
    connection: Connection,
    query: UserListQuery,
    order: SortOrder,
    after: tuple[Any, uuid.UUID] | None,
) -> Page:
    """One page in `order`, starting after the key `after`, and (when asked)
    how many users match the filters.

    A name query of three characters or more on MariaDB: in created_at
    order it walks the trigram table, which keeps that order
    (name_search.walks_in_order); in another order it asks the trigram
    table when one of its trigrams is rare (_has_rare_trigram), and else,
    in another order walks the sort's index that holds the name, testing
    the names there (name_search.window_index). Otherwise a name query
    reads at most sum(WINDOWS) users (SQLite: SEARCH_WINDOWS) in the
    page's order first;
    when the page is not full there, a query of three characters or more
    asks the name index (name_search.restrict), as soon as the next window
    is not likely to fill the page at the rate of matches seen so far
    (_may_fill), and a shorter one, which no trigram serves, ends the page
    at the window's end: it may hold fewer than `limit` users, even none,
    and still have a next page (docs/api.md).
    """
    dialect = connection.dialect.name
    values = filter_values(query)
    name = query.name
    search: dict[str, Any] = {}
    if name is not None and not name_search.is_short(name) and name_search.has_index(dialect):
        search = name_search.search_values(dialect, name)
    resume_after = None
    if name is None or not (search or name_search.is_short(name)):
        unindexed = await wide_ranges(connection, values, order)
        rows = await _page(connection, values, order, after, query.limit, unindexed=unindexed)
    elif search and name_search.walks_in_order(dialect, order.field):
        search = await _rarest_first(connection, search)
        rows = await _page(connection, values, order, after, query.limit, search=search)
    elif search and await _has_rare_trigram(connection, search):
        rows = await _page(connection, values, order, after, query.limit, search=search)
    elif search and name_search.window_index(dialect, order.field, tuple(values)):
        rows = await _page(connection, values, order, after, query.limit)
    else:
        rows = []
        start, read = after, 0
        windows = SEARCH_WINDOWS if search and dialect == "sqlite" else WINDOWS
        candidates = _Candidates(connection, search)
        for following, size in enumerate(windows, start=1):
            wanted = query.limit - len(rows)
            # PostgreSQL's first window is one statement; its end is looked
            # up only for a second window.
            merged = bool(search) and dialect == "postgresql" and not read
            if merged:
                rows += await _window_page(connection, values, order, start, wanted, size)
            else:
                end = await _window_end(connection, order, start, size)
                rows += await _page(connection, values, order, start, wanted, until=end)
            read += size
            if len(rows) > query.limit or (not merged and end is None):
                break
            later = windows[following:]
            walks_on = dialect == "sqlite" and bool(later)
            if search and not (
                _may_fill(dialect, len(rows), read, later, query.limit)
                or (walks_on and not rows and await candidates.more_than(later[0]))
            ):
                sort_found = dialect == "postgresql" and not await candidates.more_than(
                    SORTED_CANDIDATES_MAX
                )
                rows = await _page(
                    connection,
                    values,
                    order,
                    after,
                    query.limit,
                    search=search,
                    sort_found=sort_found,
                )
                break
            if merged:
                end = await _window_end(connection, order, start, size)
                if end is None:
                    break
            start = end
        else:
            resume_after = end  # no search: a short query
    total = None
    if query.include_total:
        counted = {**values, **search}
        filters = tuple(counted)
        count = compiled(
            connection,
            ("count", filters),
            lambda: count_statement(tuple(values), dialect=dialect, search=tuple(search)),
        )
        row = await connection.one(count, counted)
        total = row[0] if row else 0
    more = len(rows) > query.limit or resume_after is not None
    return Page([row[0] for row in rows[: query.limit]], more, total, resume_after)


def _may_fill(dialect: str, found: int, read: int, following: Sequence[int], limit: int) -> bool:
    """Whether a name query with an index reads the next window (the first
    of `following`) rather than ask the index, `found` matches having come
    from the `read` users before it: when, at that rate, the window may
    fill the page of `limit` (+ 1) users (a query that matches a few users
    or none reads 1,000 users, not 5,000: docs/performance.md, "Name
    search"). SQLite likewise, and while no window has found a match (no
    rate to go by) also when the index would give more candidates than the
    window holds (_Candidates). MariaDB (it reads each window's users
    by their random id, and a common trigram's holders cost it more than
    the windows): whenever a window follows."""
    if dialect not in ("postgresql", "sqlite"):
        return bool(following)
    return bool(following) and found * following[0] >= (limit + 1 - found) * read


class _Candidates:
    """How many users the name index finds for a query's `search` values:
    SQLite counts them up to a cap (an FTS walk: 0.3-4.3 ms for a common
    trigram at a million users), PostgreSQL asks its planner once
    (name_search.estimate_statement: 0.2 ms)."""

    def __init__(self, connection: Connection, search: Mapping[str, Any]) -> None:
        self.connection = connection
        self.search = search
        self.estimate: int | None = None

    async def more_than(self, cap: int) -> bool:
        connection, search = self.connection, self.search
        if connection.dialect.name == "postgresql":
            if self.estimate is None:
                names = tuple(search)
                statement = compiled(
                    connection,
                    ("estimate", names),
                    partial(name_search.estimate_statement, names),
                )
                row = await connection.one(statement, search)
                self.estimate = int(row[0][0]["Plan"]["Plan Rows"]) if row is not None else 0
            return self.estimate > cap
        if connection.dialect.name != "sqlite":
            return False
        statement = compiled(connection, "fts_candidates", name_search.fts_candidates_statement)
        row = await connection.one(
            statement, {"name_phrase": search["name_phrase"], "cap": cap + 1}
        )
        return row is not None and row[0] > cap


async def _window_page(
    connection: Connection,
    values: Mapping[str, Any],
    order: SortOrder,
    after: tuple[Any, uuid.UUID] | None,
    limit: int,
    size: int,
) -> list[Row]:
    """The rows of one page (one more than `limit`) for the filters'
    `values` among the `size` users after `after` (window_page_statement)."""
    dialect = connection.dialect.name
    filters = tuple(values)
    statement = compiled(
        connection,
        ("window_page", filters, str(order), after is not None),
        lambda: window_page_statement(filters, order, after=after is not None, dialect=dialect),
    )
    params = page_values(values, limit, after)
    params["window_size"] = size
    return await connection.all(statement, params)


async def _page(
    connection: Connection,
    values: Mapping[str, Any],
    order: SortOrder,
    after: tuple[Any, uuid.UUID] | None,
    limit: int,
    *,
    until: tuple[Any, uuid.UUID] | None = None,
    search: Mapping[str, Any] = {},
    unindexed: frozenset[str] = frozenset(),
    sort_found: bool = False,
) -> list[Row]:
    """The rows of one page (one more than `limit`) for the filters'
    `values`, up to the key `until`, among the name index's finds for its
    `search` values (name_search.search_values), with no index on the
    `unindexed` columns' ranges (wide_ranges)."""
    dialect = connection.dialect.name
    filters, found_by, plain = tuple(values), tuple(search), tuple(sorted(unindexed))
    statement = compiled(
        connection,
        (
            "page",
            filters,
            found_by,
            str(order),
            after is not None,
            until is not None,
            plain,
            sort_found,
        ),
        lambda: page_statement(
            filters,
            order,
            after=after is not None,
            dialect=dialect,
            until=until is not None,
            search=found_by,
            unindexed=plain,
            sort_found=sort_found,
        ),
    )
    params = page_values({**values, **search}, limit, after)
    if until is not None:
        params["until_value"], params["until_id"] = until
    return await connection.all(statement, params)


async def _has_rare_trigram(connection: Connection, search: Mapping[str, Any]) -> bool:
    """MariaDB: whether one of the query's trigrams is rare enough that the
    index is the cheaper way (name_search.RARE_TRIGRAM_USERS)."""
    if connection.dialect.name not in ("mysql", "mariadb"):
        return False
    statement = compiled(connection, "rare_trigram", name_search.rare_statement)
    cap = name_search.RARE_TRIGRAM_USERS
    for trigram in search.values():
        row = await connection.one(statement, {"trigram": trigram, "cap": cap + 1})
        if row is not None and row[0] <= cap:
            return True
    return False


async def _rarest_first(connection: Connection, search: Mapping[str, Any]) -> dict[str, Any]:
    """MariaDB: the `search` values with the trigram held by the fewest
    users (counted up to RARE_TRIGRAM_USERS + 1) first, the one walked."""
    if len(search) < 2:
        return dict(search)
    statement = compiled(connection, "rare_trigram", name_search.rare_statement)
    cap = name_search.RARE_TRIGRAM_USERS + 1
    held = []
    for trigram in search.values():
        row = await connection.one(statement, {"trigram": trigram, "cap": cap})
        held.append((row[0] if row is not None else 0, trigram))
    return {f"name_trigram_{i}": trigram for i, (_, trigram) in enumerate(sorted(held))}


async def _window_end(
    connection: Connection, order: SortOrder, after: tuple[Any, uuid.UUID] | None, size: int
) -> tuple[Any, uuid.UUID] | None:
    """The key of the last of the `size` users after `after`; None when
    fewer follow it (the window reaches the end)."""
    dialect = connection.dialect.name
    statement = compiled(
        connection,
        ("window_end", str(order), after is not None),
        lambda: window_end_statement(order, after=after is not None, dialect=dialect),
    )
    values: dict[str, Any] = {"window_skip": size - 1}
    if after is not None:
        values["after_value"], values["after_id"] = after
    row = await connection.one(statement, values)
    return None if row is None else typed_key(orjson.loads(row[0]), order)
