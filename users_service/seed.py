"""Load N synthetic users fast, through each database's bulk path.

PostgreSQL gets COPY; SQLite and MariaDB get multi-row INSERTs in large
transactions. Every name and the email pattern go through the same
validation as a created user's (once each, not once per row, which would
cost more than the inserts). Emails carry a random run tag, so seeding
twice adds users instead of colliding.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, Engine, insert
from tqdm import tqdm

from users_service.models import AGE_MAX, AGE_MIN, User, UserCreate

users = User.__table__  # type: ignore[attr-defined]

FIRST_NAMES = (
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Dennis",
    "Radia",
    "Tim",
    "Hedy",
    "John",
    "Katherine",
    "Linus",
    "Sophie",
    "Guido",
)
LAST_NAMES = (
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "Berners-Lee",
    "Lamarr",
    "Backus",
    "Johnson",
    "Torvalds",
    "Wilson",
    "van Rossum",
)
COLUMNS = ("id", "name", "email", "age", "created_at", "updated_at", "version")


def synthetic_users(count: int, *, seed: int | None = None) -> Iterator[dict[str, Any]]:
    """`count` valid users, created_at spread over the past, oldest first."""
    rng = random.Random(seed)
    email_pattern = f"seed-{secrets.token_hex(4)}-{{}}@example.com"
    names = [
        UserCreate(name=f"{first} {last}", email=email_pattern.format(count), age=0).name
        for first in FIRST_NAMES
        for last in LAST_NAMES
    ]
    start = datetime.now(UTC) - timedelta(seconds=count)
    for number in range(count):
        created = start + timedelta(seconds=number, microseconds=rng.randrange(1_000_000))
        yield {
            "id": uuid.UUID(int=rng.getrandbits(128), version=4),
            "name": rng.choice(names),
            "email": email_pattern.format(number),
            "age": rng.randint(AGE_MIN, AGE_MAX),
            "created_at": created,
            "updated_at": created,
            "version": 1,
        }


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def seed_users(
    engine: Engine, count: int, *, batch_size: int = 10_000, progress: bool = True
) -> int:
    """Insert `count` synthetic users; returns how many were inserted."""
    rows = synthetic_users(count)
    insert_batch = copy_rows if engine.dialect.name == "postgresql" else _insert_rows
    with (
        engine.connect() as connection,
        bulk_load_settings(connection),
        tqdm(total=count, unit="users", disable=not progress, smoothing=0.1) as bar,
    ):
        for batch in _batches(rows, batch_size):
            with connection.begin():
                insert_batch(connection, batch)
            bar.update(len(batch))
    return count


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


def _insert_rows(connection: Connection, batch: list[dict[str, Any]]) -> None:
    connection.execute(insert(users), batch)


def copy_rows(
    connection: Connection,
    batch: list[dict[str, Any]],
    table: str = "users",
    columns: tuple[str, ...] = COLUMNS,
) -> None:
    """PostgreSQL: the rows' `columns` into `table` by COPY."""
    cursor = connection.connection.cursor()
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in batch:
            copy.write_row(tuple(row[column] for column in columns))
