"""The user's JSON as each database renders it equals the Python rendering,
for every column of the users table (so for every column type in use)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, create_engine, delete, insert, select

from users_service.db.rendering import to_record, user_json
from users_service.models import PUBLIC_FIELDS, users
from users_service.settings import load_settings


@pytest.fixture
def engine(database_url: str) -> Any:
    engine = create_engine(load_settings(database_url=database_url).sqlalchemy_url)
    with engine.begin() as connection:
        connection.execute(delete(users))
    yield engine
    with engine.begin() as connection:
        connection.execute(delete(users))
    engine.dispose()


def sample_values(number: int, *, nulls: bool) -> dict[str, Any]:
    """A row with a value for every column, of the column's Python type
    (None for the nullable ones when `nulls`)."""
    values: dict[str, Any] = {}
    for column in users.columns:
        kind = column.type.python_type
        if nulls and column.nullable:
            values[column.name] = None
        elif kind is uuid.UUID:
            values[column.name] = uuid.uuid4()
        elif kind is datetime:
            values[column.name] = datetime(2026, 11, 30, 1, 2, 3, number * 7, tzinfo=UTC)
        elif kind is int:
            values[column.name] = number
        elif kind is str:
            values[column.name] = f'Zoë "quoted" \\ {number}@example.com'
        else:
            raise AssertionError(f"add a sample value for {column.name}: {kind}")
    return values


def rendered_by_the_database(engine: Engine, user_id: uuid.UUID) -> Any:
    with engine.connect() as connection:
        text = connection.execute(
            select(user_json(engine.dialect.name)).where(users.c.id == user_id)
        ).scalar_one()
    return orjson.loads(text)


@pytest.mark.parametrize("nulls", [False, True], ids=["values", "nulls-where-nullable"])
def test_the_database_renders_every_column_as_python_does(engine: Engine, nulls: bool) -> None:
    rows = [sample_values(number, nulls=nulls) for number in (0, 1, 99)]
    with engine.begin() as connection:
        connection.execute(insert(users), rows)

    for row in rows:
        from_python = to_record(row)
        assert list(from_python) == list(PUBLIC_FIELDS)
        assert rendered_by_the_database(engine, row["id"]) == from_python
