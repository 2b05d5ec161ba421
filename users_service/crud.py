"""The database work on users, as plain functions of a session.

Statements are SQLAlchemy Core built from the `User` table: rows come back
as tuples and are turned into the API's JSON shape once, without loading
ORM objects. Uniqueness of emails is left to the database's unique index;
its refusal is turned into 409 `email_taken` (no check-then-insert).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from users_service.db import is_unique_violation, read_transaction, write_transaction
from users_service.errors import email_taken, user_not_found, version_mismatch
from users_service.models import User, UserFields, UserListQuery
from users_service.pagination import SortOrder, as_utc
from users_service.preconditions import VersionCondition

users = User.__table__  # type: ignore[attr-defined]

UserRecord = dict[str, Any]
EDITABLE_FIELDS = ("name", "email", "age")


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_record(row: Row[Any] | Mapping[str, Any]) -> UserRecord:
    """A user as the API returns it (JSON-ready)."""
    data = row._mapping if isinstance(row, Row) else row
    return {
        "id": str(data["id"]),
        "name": data["name"],
        "email": data["email"],
        "age": data["age"],
        "created_at": _timestamp(data["created_at"]),
        "updated_at": _timestamp(data["updated_at"]),
        "version": data["version"],
    }


def _timestamp(value: datetime) -> str:
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextmanager
def _email_must_be_free(session: Session) -> Iterator[None]:
    """Turn the unique index's refusal (at write or at commit) into 409."""
    try:
        yield
    except IntegrityError as error:
        session.rollback()
        if is_unique_violation(error):
            raise email_taken() from None
        raise


def create_user(*, session: Session, data: UserFields) -> UserRecord:
    now = utcnow()
    values = {
        "id": uuid.uuid4(),
        **data.model_dump(include=set(EDITABLE_FIELDS)),
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    with write_transaction(session), _email_must_be_free(session):
        session.execute(insert(users).values(values))
    return to_record(values)


def create_users(*, session: Session, data: Sequence[UserFields]) -> list[UserRecord]:
    """Create every user or none, in the order given.

    The same email twice in `data` is refused before the database is asked
    (naming the later one); an email another user already has is refused by
    the unique index, and then looked up to name the item that collided.
    """
    first_seen: dict[str, int] = {}
    for index, item in enumerate(data):
        if item.email in first_seen:
            raise email_taken(loc=("body", "users", index, "email"))
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
    with write_transaction(session):
        try:
            session.execute(insert(users), rows)
        except IntegrityError as error:
            if not is_unique_violation(error):
                raise
            session.rollback()
            taken = set(
                session.execute(
                    select(users.c.email).where(users.c.email.in_(list(first_seen)))
                ).scalars()
            )
            collided = next((i for i, row in enumerate(rows) if row["email"] in taken), None)
            raise email_taken(
                loc=("body", "users") if collided is None else ("body", "users", collided, "email")
            ) from None
    return [to_record(row) for row in rows]


def get_user(*, session: Session, user_id: uuid.UUID) -> UserRecord:
    with read_transaction(session):
        row = session.execute(select(users).where(users.c.id == user_id)).first()
    if row is None:
        raise user_not_found()
    return to_record(row)


def update_user(
    *,
    session: Session,
    user_id: uuid.UUID,
    changes: Mapping[str, Any],
    expected: VersionCondition | None,
) -> UserRecord:
    """Apply `changes`; a change that changes nothing keeps the version.

    The row is locked while it is compared, so concurrent writers and the
    If-Match check cannot interleave.
    """
    with write_transaction(session):
        row = session.execute(select(users).where(users.c.id == user_id).with_for_update()).first()
        if row is None:
            raise user_not_found()
        if expected is not None and not expected.matches(row.version):
            raise version_mismatch()
        changed = {field: value for field, value in changes.items() if getattr(row, field) != value}
        if not changed:
            return to_record(row)
        values = {**changed, "updated_at": utcnow(), "version": row.version + 1}
        with _email_must_be_free(session):
            session.execute(update(users).where(users.c.id == user_id).values(values))
    return to_record({**row._mapping, **values})


def delete_user(*, session: Session, user_id: uuid.UUID, expected: VersionCondition | None) -> None:
    condition = users.c.id == user_id
    with write_transaction(session):
        if expected is not None and not expected.matches_any:
            row = session.execute(
                select(users.c.version).where(condition).with_for_update()
            ).first()
            if row is None:
                raise user_not_found()
            if not expected.matches(row.version):
                raise version_mismatch()
        deleted = session.execute(delete(users).where(condition)).rowcount  # type: ignore[attr-defined]
    if not deleted:
        raise user_not_found()


def _filters(query: UserListQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.email is not None:
        conditions.append(users.c.email == query.email)
    if query.name is not None:
        pattern = query.name.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(func.lower(users.c.name).like(f"%{pattern}%", escape="\\"))
    if query.min_age is not None:
        conditions.append(users.c.age >= query.min_age)
    if query.max_age is not None:
        conditions.append(users.c.age <= query.max_age)
    if query.created_after is not None:
        conditions.append(users.c.created_at > query.created_after)
    if query.created_before is not None:
        conditions.append(users.c.created_at < query.created_before)
    return conditions


def page_statement(
    query: UserListQuery,
    order: SortOrder,
    after: tuple[Any, uuid.UUID] | None,
    *,
    dialect: str,
) -> Select[Any]:
    """The SELECT for one page (one row more than asked, to see if more follow)."""
    statement = select(users).where(*_filters(query))
    if after is not None:
        statement = statement.where(order.after(after, dialect))
    return statement.order_by(*order.order_by()).limit(query.limit + 1)


def count_statement(query: UserListQuery) -> Select[Any]:
    return select(func.count()).select_from(users).where(*_filters(query))


def list_users(
    *,
    session: Session,
    query: UserListQuery,
    order: SortOrder,
    after: tuple[Any, uuid.UUID] | None,
) -> tuple[list[Row[Any]], bool, int | None]:
    """One page in `order`, starting after the key `after`.

    Returns the rows, whether more follow, and (when asked) how many users
    match the filters.
    """
    dialect = session.get_bind().dialect.name
    total = None
    with read_transaction(session):
        rows = list(session.execute(page_statement(query, order, after, dialect=dialect)))
        if query.include_total:
            total = session.execute(count_statement(query)).scalar_one()
    return rows[: query.limit], len(rows) > query.limit, total
