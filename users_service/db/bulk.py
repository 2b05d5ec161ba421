"""Bulk writes that seed and import share: each database's fastest path.

PostgreSQL gets COPY; SQLite and MariaDB get multi-row INSERTs in large
transactions, SQLite with settings for a load (`bulk_load_settings`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import Connection, Table, insert

from users_service.models import users


def insert_rows(
    connection: Connection, rows: Sequence[Mapping[str, Any]], table: Table = users
) -> None:
    """The rows into `table`, by COPY on PostgreSQL, else one multi-row INSERT."""
    if connection.dialect.name == "postgresql":
        copy_rows(connection, rows, table=table.name, columns=tuple(table.columns.keys()))
    else:
        connection.execute(insert(table), list(rows))


def copy_rows(
    connection: Connection,
    rows: Sequence[Mapping[str, Any]],
    table: str = users.name,
    columns: tuple[str, ...] = tuple(users.columns.keys()),
) -> None:
    """PostgreSQL: the rows' `columns` into `table` by COPY."""
    cursor = connection.connection.cursor()
    names = ", ".join(f'"{column}"' for column in columns)  # "user" is a keyword
    with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(tuple(row[column] for column in columns))


@contextmanager
def bulk_load_settings(
    connection: Connection, *, synchronous: Literal["OFF", "NORMAL"] = "OFF"
) -> Iterator[None]:
    """SQLite: no fsync per batch and a large page cache while loading.

    Seeded rows are synthetic: a crash mid-load loses only some of them, and
    the database stays consistent (WAL). Imports ask for NORMAL instead:
    still no fsync per batch, and safe from corruption on a power cut. The
    connection's usual settings come back afterwards.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    sqlite = connection.connection.driver_connection
    assert sqlite is not None
    synchronous = sqlite.execute("PRAGMA synchronous").fetchone()[0]
    cache_size = sqlite.execute("PRAGMA cache_size").fetchone()[0]
    sqlite.execute(f"PRAGMA synchronous={synchronous}")
    sqlite.execute("PRAGMA cache_size=-262144")  # 256 MiB
    try:
        yield
    finally:
        sqlite.execute(f"PRAGMA synchronous={int(synchronous)}")
        sqlite.execute(f"PRAGMA cache_size={int(cache_size)}")
