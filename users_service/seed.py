"""Load N synthetic users fast, through each database's bulk path (db/bulk.py).

Every name and the email pattern go through the same validation as a
created user's (once each, not once per row, which would cost more than the
inserts). Emails carry a random run tag, so seeding twice adds users instead
of colliding. Fields other than name, email and age get their defaults.

Seeded users get no change in the change log (GET /users/changes, the relay):
they are synthetic load for benchmarks, and a million changes would only
bury the real ones. `seed` says so when it finishes.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from tqdm import tqdm

from users_service.db.bulk import bulk_load, insert_rows, user_count
from users_service.models import AGE_MAX, AGE_MIN, FIELD_DEFAULTS, UserCreate

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
            **FIELD_DEFAULTS,
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
    """Insert `count` synthetic users; returns how many were inserted.

    Through `bulk_load`: on SQLite one transaction, the indexes rebuilt
    after the rows when the load is at least as large as the table (their
    emails carry a run tag of their own, so even the unique index may go);
    statistics refreshed at the end on every database.
    """
    rows = synthetic_users(count)
    with (
        engine.connect() as connection,
        bulk_load(connection, rebuild_indexes=count >= user_count(connection)) as load,
        tqdm(total=count, unit="users", disable=not progress, smoothing=0.1) as bar,
    ):
        for batch in _batches(rows, batch_size):
            with load.batch():
                insert_rows(connection, batch)
            bar.update(len(batch))
    return count
