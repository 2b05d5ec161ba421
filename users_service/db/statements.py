"""Core statements compiled once per database, with their values' conversions.

The request path builds its statements with SQLAlchemy Core from the models'
tables and runs them through the driver directly (no Session, no Result
objects; see docs/design.md). `compiled(connection, key, build)` compiles
`build()` once per database and keeps it under `key`; `Statement.params`
converts values with the column types' own bind processors, so what this
path writes is exactly what SQLAlchemy writes (migrations, seed, tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Row = tuple[Any, ...]


class Statement:
    """A Core statement compiled for one database, and its bind conversions."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self.sql = str(compiled)
        self._fixed: dict[str, Any] = {}  # values built into the statement
        self._convert: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self._convert[name] = process
            if not bind.required:
                value = bind.effective_value
                self._fixed[name] = value if process is None or value is None else process(value)
        columns = getattr(statement, "selected_columns", ())
        processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]
        self._decoders = processors if any(processors) else None

    def params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(self._fixed)
        convert = self._convert
        for name, value in values.items():
            process = convert.get(name)
            params[name] = value if process is None or value is None else process(value)
        return params

    def decode(self, row: Row) -> Row:
        """The row's values as the column types give them (datetimes, UUIDs)."""
        if self._decoders is None:
            return row
        return tuple(
            value if decode is None or value is None else decode(value)
            for decode, value in zip(self._decoders, row, strict=True)
        )


class HasDialect(Protocol):
    dialect: Dialect


_COMPILED: dict[tuple[str, str, Any], Statement] = {}


def compiled(connection: HasDialect, key: Any, build: Callable[[], ClauseElement]) -> Statement:
    """The statement `build()` makes, compiled for the connection's database once.

    `key` names the statement's shape: the same key must always build the
    same statement (values travel separately).
    """
    dialect = connection.dialect
    cache_key = (dialect.name, dialect.paramstyle, key)
    statement = _COMPILED.get(cache_key)
    if statement is None:
        statement = _COMPILED[cache_key] = Statement(build(), dialect)
    return statement
