"""A user as the API's JSON, from the table's columns and their types.

Two renderings that must agree character for character (a unit test per
database checks them against each other for every column type in use):

- `user_json(dialect)`: the JSON object as the database renders it, in its
  own functions, for reads (a page of 50 users is 50 strings to join, not
  350 values to convert in Python; docs/design.md);
- `to_record(values)`: the same object from the values this process wrote.

Both are generated from `models.users`' columns in `PUBLIC_FIELDS` order, by
column type: a new column of a type already in use needs nothing here. A
type with no rendering yet is refused when the statement is first built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, ColumnElement, Text, cast, func, literal_column
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.types import DateTime, Integer, String, TypeDecorator, TypeEngine, Uuid

from users_service.models import PUBLIC_FIELDS, users

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
UserRecord = dict[str, Any]

_UUID_GROUPS = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))


def as_utc(value: datetime) -> datetime:
    """Timestamps come back naive from SQLite and MariaDB; they are UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _uuid_text(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return cast(column, Text)
    if dialect == "sqlite":  # stored dashed (models.DashedUuid)
        return column
    # MariaDB keeps 32 hex digits: put the dashes in.
    parts = [func.substr(column, start, length) for start, length in _UUID_GROUPS]
    joined: ColumnElement[Any] = parts[0]
    for part in parts[1:]:
        joined = joined.concat("-").concat(part)
    return joined


def _timestamp_text(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.to_char(
            func.timezone(literal_column("'UTC'"), column),
            literal_column("""'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""),
        )
    if dialect == "sqlite":  # stored in this form (models.Timestamp)
        return column
    return func.date_format(column, "%Y-%m-%dT%H:%i:%s.%fZ")


def _as_is(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    return column


def _uuid_value(value: Any) -> str:
    return str(value)


def _timestamp_value(value: Any) -> str:
    return as_utc(value).strftime(TIMESTAMP_FORMAT)


def _plain_value(value: Any) -> Any:
    return value


# (column type, its JSON in SQL, its JSON from a Python value): the first
# that the column's type is an instance of. JSON numbers and strings come
# out of every database's JSON functions as they are.
InSQL = Callable[[ColumnElement[Any], str], ColumnElement[Any]]
InPython = Callable[[Any], Any]
_RENDERINGS: tuple[tuple[type[TypeEngine[Any]], InSQL, InPython], ...] = (
    (Uuid, _uuid_text, _uuid_value),
    (DateTime, _timestamp_text, _timestamp_value),
    (Integer, _as_is, _plain_value),
    (String, _as_is, _plain_value),
)


def _rendering(column: Column[Any]) -> tuple[InSQL, InPython]:
    column_type = column.type
    while isinstance(column_type, TypeDecorator):  # SQLModel's AutoString, say
        column_type = column_type.impl_instance
    for kind, in_sql, in_python in _RENDERINGS:
        if isinstance(column_type, kind):
            return in_sql, in_python
    raise TypeError(
        f"users.{column.name} is a {type(column_type).__name__}, which has no JSON rendering: "
        "add one to _RENDERINGS in users_service/db/rendering.py"
    )


_PYTHON: dict[str, Callable[[Any], Any]] = {
    name: _rendering(users.c[name])[1] for name in PUBLIC_FIELDS
}


def json_value(field: str, value: Any) -> Any:
    """A field's value as the API's JSON shows it."""
    return None if value is None else _PYTHON[field](value)


def to_record(values: Mapping[Any, Any]) -> UserRecord:
    """A user as the API returns it, from the values this process wrote."""
    return {
        name: None if (value := values[name]) is None else render(value)
        for name, render in _PYTHON.items()
    }


def user_json(
    dialect: str, columns: ReadOnlyColumnCollection[str, Any] | None = None
) -> ColumnElement[str]:
    """The user as the API's JSON object (text), in the database's own
    functions: of `users`, or of `columns` holding users' columns by name
    (a statement's RETURNING, say)."""
    build = func.json_build_object if dialect == "postgresql" else func.json_object
    source = users.c if columns is None else columns
    arguments: list[Any] = []
    for name in PUBLIC_FIELDS:
        in_sql = _rendering(users.c[name])[0]
        arguments += [literal_column(f"'{name}'"), in_sql(source[name], dialect)]
    return cast(build(*arguments), Text)
