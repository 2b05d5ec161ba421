"""Bulk writes that seed and import share: each database's fastest path.

PostgreSQL gets COPY; SQLite and MariaDB get multi-row INSERTs. `bulk_load`
wraps a whole load: on SQLite one transaction with settings for a load,
on PostgreSQL and MariaDB one transaction per batch; on every database the
planner's statistics are refreshed at the end, so that the listing's plans
hold right after the load (a table PostgreSQL has never analyzed looks
empty to its planner: `min_age=60&max_age=90` took 600-790 ms at a million
users instead of 2 ms).

SQLite, seeding into an empty database (measured on this machine, 2 cores
loaded by other work, the load average 7-12 for the first six rows, so
read the seconds loosely; bytes are `write_bytes`
of /proc/self/io; the file is 406 MB for a million users, 383 MB with the
indexes rebuilt):

| users | how | seconds | written | x file |
| ---: | --- | ---: | ---: | ---: |
| 200k | before: 10,000-row "batches", `synchronous=FULL` | 196 | 9.8 GB | 121 |
| 200k | the same, `synchronous=OFF`, 256 MiB cache | 32.6 | 85 MB | 1.05 |
| 200k | one transaction, 256 MiB cache | 7.0 | 163 MB | 2.01 |
| 1M | one transaction, 256 MiB cache (spills into the WAL) | 85 | 968 MB | 2.38 |
| 1M | one transaction, 1 GiB cache | 93-101 | 816 MB | 2.01 |
| 1M | one transaction, 1 GiB, indexes dropped and rebuilt | 76 | 770 MB | 2.01 |
| 1M | the same, `synchronous=NORMAL`: `seed` as it is (load average 3.7) | 31.8 | 807 MB | 2.01 |
| 1M | `import` as it is (the unique indexes kept; its temporary table) | 79.7 | 1,090 MB | 2.68 |

The seeder's batches were no transactions at all (SQLite's driver runs in
autocommit mode here unless a transaction is marked as writing), so every
row committed on its own, and the `synchronous=OFF` it asked for never
applied. `write_bytes` stays low under OFF only because the kernel absorbs
rewrites of pages it has not written back yet; the time still goes in the
commits. One transaction writes each page twice (the WAL, then the
checkpoint): 2x. Rebuilding the indexes from the rows (one sort each)
instead of inserting every row into five B-trees at random places is the
fastest, and packs the indexes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, func, insert, select

from users_service.db import name_search
from users_service.db.engine import WRITE_OPTION
from users_service.models import users

# SQLite's page cache for a load: enough for the B-trees a million users
# touch, so that nothing spills into the WAL before the commit (with 256
# MiB a million-user load wrote 2.4x the file, with 1 GiB 2.0x). Memory
# is taken only as pages are read.
SQLITE_LOAD_CACHE_KIB = 1024 * 1024

ANALYZE = {
    "sqlite": "ANALYZE users",
    "postgresql": "ANALYZE users",
    "mysql": "ANALYZE TABLE users",
    "mariadb": "ANALYZE TABLE users",
}


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


@dataclass
class BulkLoad:
    """A load in progress: `batch()` around each batch's writes."""

    connection: Connection
    one_transaction: bool

    def batch(self) -> AbstractContextManager[Any]:
        """The batch's transaction, or nothing inside the load's own (SQLite)."""
        return nullcontext() if self.one_transaction else self.connection.begin()


@contextmanager
def bulk_load(
    connection: Connection, *, rebuild_indexes: bool = True, keep_unique: bool = False
) -> Iterator[BulkLoad]:
    """A load of many users through `connection`; statistics refreshed after.

    SQLite: one transaction (`BEGIN IMMEDIATE`), `synchronous=NORMAL` and a
    large page cache while it runs; with `rebuild_indexes`,
    the users' secondary indexes are dropped at the start and built again
    from the rows before the commit (`keep_unique` keeps the unique ones,
    which import needs to find collisions). An interrupted load leaves
    nothing: its uncommitted WAL frames are ignored when the database is
    next opened, and the indexes were never gone for anyone else. Afterwards
    the WAL is checkpointed and truncated and the connection's settings
    come back (WAL, `synchronous` as configured).

    PostgreSQL and MariaDB: one transaction per batch (`BulkLoad.batch`).
    """
    connection.execution_options(**{WRITE_OPTION: True})
    if connection.dialect.name != "sqlite":
        yield BulkLoad(connection, one_transaction=False)
        analyze(connection)
        return
    with _sqlite_load_settings(connection):
        with connection.begin():
            rebuilt = (
                _drop_indexes(connection, keep_unique=keep_unique) + _drop_name_trigger(connection)
                if rebuild_indexes
                else []
            )
            yield BulkLoad(connection, one_transaction=True)
            for statement in rebuilt:
                connection.exec_driver_sql(statement)
        analyze(connection)
        sqlite = connection.connection.driver_connection
        assert isinstance(sqlite, sqlite3.Connection)
        sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # outside any transaction


def user_count(connection: Connection) -> int:
    """How many users there are, read outside any transaction of the caller's."""
    count = connection.execute(select(func.count()).select_from(users)).scalar_one()
    connection.rollback()  # the read began one (SQLAlchemy's, and the server's)
    return int(count)


def analyze(connection: Connection) -> None:
    """Refresh the planner's statistics on users. (SQLite's `PRAGMA optimize`
    would do nothing here: before 3.46 it analyzes only tables that the
    connection's own queries looked up through an index.)"""
    with connection.begin():
        connection.exec_driver_sql(ANALYZE[connection.dialect.name])


def _drop_indexes(connection: Connection, *, keep_unique: bool) -> list[str]:
    """Drop the users' indexes made by CREATE INDEX (not the primary key's);
    returns the statements that make them again."""
    listed = connection.exec_driver_sql(f"PRAGMA index_list({users.name})").all()
    names = [row.name for row in listed if row.origin == "c" and not (keep_unique and row.unique)]
    statements = []
    for name in names:
        statement = connection.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
        ).scalar_one()
        connection.exec_driver_sql(f'DROP INDEX "{name}"')
        statements.append(str(statement))
    return statements


def _drop_name_trigger(connection: Connection) -> list[str]:
    """Drop the trigger that indexes each new user's name for search (FTS5);
    returns the statements that make it again and index every name anew.
    One rebuild after the rows is cheaper than feeding the index row by row:
    seeding a million users took 113 s with the trigger, 35 s plus a 17 s
    rebuild without it (one after the other, load average 5)."""
    found = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?",
        (name_search.SQLITE_INSERT_TRIGGER,),
    ).scalar_one_or_none()
    if found is None:  # a database migrated to before the name search
        return []
    connection.exec_driver_sql(f'DROP TRIGGER "{name_search.SQLITE_INSERT_TRIGGER}"')
    return [str(found), name_search.SQLITE_REBUILD]


@contextmanager
def _sqlite_load_settings(connection: Connection) -> Iterator[None]:
    """`synchronous=NORMAL` and a large page cache; then as they were.

    NORMAL, not OFF: a load is one transaction, so NORMAL's cost is a few
    fsyncs (the WAL before the checkpoint, the file after it), and it keeps
    the file whole through a power cut. `temp_store` stays as it is:
    changing it drops the connection's temporary tables (import's ledger),
    and with this cache the index sorts fit in memory anyway.
    """
    sqlite = connection.connection.driver_connection
    assert isinstance(sqlite, sqlite3.Connection)
    saved = {
        name: sqlite.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("synchronous", "cache_size")
    }
    sqlite.execute("PRAGMA synchronous=NORMAL")
    sqlite.execute(f"PRAGMA cache_size=-{SQLITE_LOAD_CACHE_KIB}")
    try:
        yield
    finally:
        for name, value in saved.items():
            sqlite.execute(f"PRAGMA {name}={int(value)}")
