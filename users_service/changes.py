"""The change log: one row per change to a user, written in the change's own transaction.

Every create (single, batch, import), every PUT or PATCH that changes a
field and every delete appends a change (`append`) inside the transaction
that makes it, so a write and its change commit together or not at all,
whatever stops them (a constraint, a statement timeout, a SIGKILL). It
knows nothing of HTTP: routes give it the caller and request id
(`ChangeSource`).

No gaps. A consumer follows `seq` (GET /users/changes, the relay); it must
never see seq 7 before seq 6 commits, or it would move past 6 for good. So
on every database seq order is commit order:

- SQLite has one writer at a time (BEGIN IMMEDIATE, and one connection per
  process that group-commits its writes in order): seqs are handed out and
  committed in the same order.
- PostgreSQL: each transaction takes a transaction-scoped advisory lock just
  before it draws its seqs, and holds it until its commit is visible; the
  next writer draws its seqs only then. Only the append and the commit are
  serialized; the rest of the write (the user's row, its index entries)
  runs concurrently as before.
- MariaDB/MySQL: the same, with a row lock (`SELECT ... FOR UPDATE` on the
  `pruned` row of change_positions) in place of the advisory lock.

Retention: `prune` deletes the changes older than CHANGES_RETENTION_DAYS and
records how far it went (the `pruned` position); a cursor before it is
expired (410 `cursor_expired`).

Erasure: `erase_user` (called by a delete) sets every earlier change's
`user` to NULL; the action, version, caller and time stay.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection as SyncConnection
from sqlalchemy import bindparam, delete, func, insert, literal, select, update

from users_service.db.bulk import copy_rows
from users_service.db.database import Connection, Database
from users_service.db.rendering import UserRecord, as_utc, json_value, user_json
from users_service.db.statements import Row, compiled
from users_service.models import (
    EDITABLE_FIELDS,
    PRUNED_POSITION,
    change_positions,
    user_changes,
    users,
)

logger = logging.getLogger("users_service.changes")

CREATED, UPDATED, DELETED = "created", "updated", "deleted"
# The key of PostgreSQL's advisory lock that orders appends ("usrchg").
ORDER_LOCK_KEY = 0x757372636867


@dataclass(frozen=True)
class ChangeSource:
    """Who makes a change: the caller's name and the request's id."""

    caller: str
    request_id: str


# Changes made by `users-service import` (its request id names the run).
IMPORT_SOURCE = ChangeSource("import", "")


def _row(
    source: ChangeSource,
    action: str,
    user_id: uuid.UUID,
    version: int,
    at: datetime,
    changed: Sequence[str],
    user: UserRecord | None,
) -> dict[str, Any]:
    return {
        "action": action,
        "user_id": user_id,
        "version": version,
        "at": at,
        "caller": source.caller,
        "request_id": source.request_id,
        "changed": orjson.dumps(list(changed)).decode(),
        "user": None if user is None else orjson.dumps(user).decode(),
    }


def created_row(
    source: ChangeSource, values: Mapping[str, Any], user: UserRecord, at: datetime | None = None
) -> dict[str, Any]:
    """The change of a user just created from `values` (as written), at
    `at` (default: the user's created_at)."""
    when = values["created_at"] if at is None else at
    return _row(source, CREATED, values["id"], values["version"], when, EDITABLE_FIELDS, user)


def updated_row(
    source: ChangeSource, user_id: uuid.UUID, at: datetime, changed: Sequence[str], user: UserRecord
) -> dict[str, Any]:
    order = [field for field in EDITABLE_FIELDS if field in changed]
    return _row(source, UPDATED, user_id, user["version"], at, order, user)


def deleted_row(
    source: ChangeSource, user_id: uuid.UUID, version: int, at: datetime
) -> dict[str, Any]:
    """A delete's change: its version is one past the user's last, so that a
    consumer keeping the newest version of each user applies it too."""
    return _row(source, DELETED, user_id, version + 1, at, (), None)


def _order_lock(dialect: str) -> Any | None:
    """The statement that orders appends on this database (see the module's notes)."""
    if dialect == "postgresql":
        return select(func.pg_advisory_xact_lock(ORDER_LOCK_KEY))
    if dialect in ("mysql", "mariadb"):
        return (
            select(change_positions.c.seq)
            .where(change_positions.c.name == PRUNED_POSITION)
            .with_for_update()
        )
    return None  # SQLite: one writer at a time already


async def _take_order_lock(connection: Connection) -> None:
    lock = _order_lock(connection.dialect.name)
    if lock is not None:
        await connection.one(compiled(connection, "change_order_lock", lambda: lock))


# The columns a change is written with (seq is the database's).
ROW_COLUMNS = tuple(column.name for column in user_changes.columns if column.name != "seq")


def _insert_statement() -> Any:
    return insert(user_changes).values({name: bindparam(name) for name in ROW_COLUMNS})


def _locked_insert_statement() -> Any:
    """PostgreSQL: the order lock and one change in one statement (one round
    trip less per write). The lock's CTE is the row source, so it is taken
    before the row's seq is drawn."""
    lock = select(func.pg_advisory_xact_lock(ORDER_LOCK_KEY).label("locked")).cte("order_lock")
    values = select(
        *(bindparam(name, type_=user_changes.c[name].type) for name in ROW_COLUMNS)
    ).select_from(lock)
    return insert(user_changes).from_select(ROW_COLUMNS, values)


def _with_change_statement(write: Any) -> Any:
    """PostgreSQL: a user's write (an INSERT or UPDATE returning the user's
    id, as a CTE), the order lock and its change in one statement: one
    round trip for what three statements took.

    The lock is taken for the row the write returns, so only once that
    write is done (a racing create of the same email waits for the other's
    commit without holding the lock), and before the change's seq is
    drawn. The change's values are bound as `change_<column>`.
    """
    lock = (
        select(func.pg_advisory_xact_lock(ORDER_LOCK_KEY).label("locked"))
        .select_from(write.returning(users.c.id).cte("written_user"))
        .cte("order_lock")
    )
    values = select(
        *(bindparam(f"change_{name}", type_=user_changes.c[name].type) for name in ROW_COLUMNS)
    ).select_from(lock)
    return insert(user_changes).from_select(ROW_COLUMNS, values)


def _change_values(change: Mapping[str, Any]) -> dict[str, Any]:
    return {f"change_{name}": value for name, value in change.items()}


async def insert_user_with_change(
    *, connection: Connection, values: Mapping[str, Any], change: Mapping[str, Any]
) -> None:
    """PostgreSQL only: insert a user (`values`, bound by column name) and
    append its change, in one statement."""
    statement = compiled(
        connection,
        "insert_user_with_change",
        lambda: _with_change_statement(
            insert(users).values({column.name: bindparam(column.name) for column in users.columns})
        ),
    )
    await connection.run(statement, {**values, **_change_values(change)})


async def update_user_with_change(
    *,
    connection: Connection,
    update_user: Any,
    key: Any,
    values: Mapping[str, Any],
    change: Mapping[str, Any],
) -> bool:
    """PostgreSQL only: run `update_user` (an UPDATE of one user, whose
    shape `key` names) and append its change, in one statement; whether
    the UPDATE found its row (if not, nothing is written)."""
    statement = compiled(
        connection, ("with_change", key), lambda: _with_change_statement(update_user())
    )
    return await connection.run(statement, {**values, **_change_values(change)}) == 1


def _returning_change_statement(write: Any) -> Any:
    """PostgreSQL: an UPDATE of one user that returns the user's columns and
    `changed` (the changed fields' names as JSON text), the order lock and
    the change it makes, built from what the UPDATE returns, in one
    statement that selects the user as the API's JSON. The change's other
    values are bound as `change_<column>`."""
    written = write.cte("written_user")
    lock = (
        select(func.pg_advisory_xact_lock(ORDER_LOCK_KEY).label("locked"))
        .select_from(written)
        .cte("order_lock")
    )
    made = {
        "action": literal(UPDATED, type_=user_changes.c.action.type),
        "user_id": written.c.id,
        "version": written.c.version,
        "changed": written.c.changed,
        "user": user_json("postgresql", written.c),
    }
    values = select(
        *(
            made.get(name, bindparam(f"change_{name}", type_=user_changes.c[name].type))
            for name in ROW_COLUMNS
        )
    ).select_from(written, lock)
    change = insert(user_changes).from_select(ROW_COLUMNS, values).cte("change")
    return select(user_json("postgresql", written.c)).add_cte(change)


async def update_user_returning_change(
    *,
    connection: Connection,
    update_user: Any,
    key: Any,
    values: Mapping[str, Any],
    source: ChangeSource,
    at: datetime,
) -> str | None:
    """PostgreSQL only: run `update_user` (see _returning_change_statement)
    and append the change it made at `at`, in one statement; the user as
    the API's JSON text, or None if the UPDATE changed no row (nothing is
    written)."""
    statement = compiled(
        connection, ("returning_change", key), lambda: _returning_change_statement(update_user())
    )
    change = {"at": at, "caller": source.caller, "request_id": source.request_id}
    row = await connection.one(statement, {**values, **_change_values(change)})
    return None if row is None else str(row[0])


async def append(*, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append changes in the connection's open write transaction, in order.

    Call it last in the transaction: the order lock it takes is held until
    the commit.
    """
    if len(rows) == 1 and connection.dialect.name == "postgresql":
        statement = compiled(connection, "insert_change_locked", _locked_insert_statement)
        await connection.run(statement, rows[0])
        return
    await _take_order_lock(connection)
    statement = compiled(connection, "insert_change", _insert_statement)
    if len(rows) == 1:
        await connection.run(statement, rows[0])
    else:
        await connection.run_many(statement, rows)


def append_sync(connection: SyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """`append` for the bulk paths (import), on a SQLAlchemy connection."""
    if not rows:
        return
    lock = _order_lock(connection.dialect.name)
    if lock is not None:
        connection.execute(lock)
    if connection.dialect.name == "postgresql":
        copy_rows(connection, rows, table=user_changes.name, columns=ROW_COLUMNS)
    else:
        connection.execute(_insert_statement(), list(rows))


async def erase_user(*, connection: Connection, user_id: uuid.UUID) -> None:
    """Forget the user's name and email in their earlier changes.

    Takes the order lock first, as `prune` does before it touches changes:
    the two then never wait on each other's rows in opposite orders.
    """
    await _take_order_lock(connection)
    statement = compiled(
        connection,
        "erase_changes",
        lambda: (
            update(user_changes)
            .where(user_changes.c.user_id == bindparam("user_id"))
            .where(user_changes.c.user.is_not(None))
            .values(user=None)
        ),
    )
    await connection.run(statement, {"user_id": user_id})


# --------------------------------------------------------------------------
# Reading

_COLUMNS = (
    user_changes.c.seq,
    user_changes.c.action,
    user_changes.c.user_id,
    user_changes.c.version,
    user_changes.c.at,
    user_changes.c.caller,
    user_changes.c.request_id,
    user_changes.c.changed,
    user_changes.c.user,
)


def item_of(row: Row) -> dict[str, Any]:
    """A change as the API shows it, from a decoded row of _COLUMNS."""
    seq, action, user_id, version, at, caller, request_id, changed, user = row
    return {
        "seq": seq,
        "action": action,
        "user_id": str(user_id),
        "version": version,
        "at": json_value("updated_at", as_utc(at)),
        "caller": caller,
        "request_id": request_id,
        "changed": orjson.Fragment(changed),
        "user": None if user is None else orjson.Fragment(user),
    }


@dataclass
class FeedPage:
    items: list[dict[str, Any]]
    position: int  # the seq to resume after
    expired: bool  # the position asked for is before what retention kept


async def stored_position(connection: Connection, name: str) -> int | None:
    """A named position of change_positions (None if there is none)."""
    statement = compiled(
        connection,
        "stored_position",
        lambda: select(change_positions.c.seq).where(change_positions.c.name == bindparam("name")),
    )
    row = await connection.one(statement, {"name": name})
    return None if row is None else int(row[0])


async def _pruned(connection: Connection) -> int:
    return await stored_position(connection, PRUNED_POSITION) or 0


async def read_feed(*, database: Database, after: int | None, limit: int) -> FeedPage:
    """Up to `limit` changes after seq `after` (None: from the oldest kept)."""
    async with database.read() as connection:
        if after is None:
            after = await _pruned(connection)
        statement = compiled(
            connection,
            "feed_page",
            lambda: (
                select(*_COLUMNS)
                .where(user_changes.c.seq > bindparam("after"))
                .order_by(user_changes.c.seq)
                .limit(bindparam("limit"))
            ),
        )
        rows = await connection.all(statement, {"after": after, "limit": limit})
        # Read after the page: a prune that ran before the page was read
        # shows here, so a page with a hole is never answered.
        pruned = await _pruned(connection)
    items = [item_of(statement.decode(row)) for row in rows]
    position = items[-1]["seq"] if items else after
    return FeedPage(items, position, expired=after < pruned)


@dataclass
class HistoryPageRows:
    items: list[dict[str, Any]]
    more: bool


async def read_history(
    *, connection: Connection, user_id: uuid.UUID, before: int | None, limit: int
) -> HistoryPageRows:
    """The user's changes, newest first, before seq `before` (None: the newest)."""
    statement = compiled(
        connection,
        ("history_page", before is not None),
        lambda: (
            select(*_COLUMNS)
            .where(user_changes.c.user_id == bindparam("user_id"))
            .where(*([user_changes.c.seq < bindparam("before")] if before is not None else []))
            .order_by(user_changes.c.seq.desc())
            .limit(bindparam("limit"))
        ),
    )
    values: dict[str, Any] = {"user_id": user_id, "limit": limit + 1}
    if before is not None:
        values["before"] = before
    rows = await connection.all(statement, values)
    items = [item_of(statement.decode(row)) for row in rows[:limit]]
    return HistoryPageRows(items, len(rows) > limit)


# --------------------------------------------------------------------------
# Waiting for a change (long polls: db/signal.py)

# How often a long poll looks again when nothing in this process committed:
# the longest a change written by another process or replica waits.
RECHECK_SECONDS = 0.5


# --------------------------------------------------------------------------
# Retention

PRUNE_CHUNK = 1000


async def prune(*, database: Database, retention: timedelta, now: datetime | None = None) -> int:
    """Delete the changes older than `retention`, oldest first; returns how many.

    Walks from the oldest change in seq order and stops at the first one
    still kept, so the changes kept are always every change after the
    `pruned` position.
    """
    cutoff = (now or datetime.now(UTC)) - retention
    deleted = 0
    while True:
        async with database.transaction() as connection:
            oldest = compiled(
                connection,
                "oldest_changes",
                lambda: (
                    select(user_changes.c.seq, user_changes.c.at)
                    .order_by(user_changes.c.seq)
                    .limit(PRUNE_CHUNK)
                ),
            )
            rows = [oldest.decode(row) for row in await connection.all(oldest)]
            through = None
            for seq, at in rows:
                if as_utc(at) >= cutoff:
                    break
                through = seq
            if through is None:
                return deleted
            await _take_order_lock(connection)
            remove = compiled(
                connection,
                "prune_changes",
                lambda: delete(user_changes).where(user_changes.c.seq <= bindparam("through")),
            )
            deleted += await connection.run(remove, {"through": through})
            advance = compiled(
                connection,
                "advance_pruned",
                lambda: (
                    update(change_positions)
                    .where(change_positions.c.name == bindparam("name"))
                    .where(change_positions.c.seq < bindparam("through"))
                    .values(seq=bindparam("through"))
                ),
            )
            await connection.run(advance, {"name": PRUNED_POSITION, "through": through})
        if through != rows[-1][0] or len(rows) < PRUNE_CHUNK:
            return deleted


PRUNE_EVERY_SECONDS = 60.0


async def prune_old_changes(database: Database, retention: timedelta) -> None:
    """Delete changes past retention every minute, until cancelled."""
    while True:
        await asyncio.sleep(PRUNE_EVERY_SECONDS)
        try:
            await prune(database=database, retention=retention)
        except Exception:
            logger.warning("could not delete old changes", exc_info=True)
