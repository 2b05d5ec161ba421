"""DELETE /users/{id} with many stored Idempotency-Key answers (issue 16).

A delete erases the stored answers that show the user. This fills a fresh
database with ERASURE_ANSWERS answers (default 200,000), each showing one
user, as keyed creates leave them (the user, the answer and, on commits
that have them, its link in idempotency_key_users), then times
ERASURE_DELETES deletes of those users in process (no server), one at a
time. Run it on both commits, one after the other:

    BENCH_DATABASES=sqlite,postgresql python -m benchmarks.erasure

The statement timeout is off, so that a slow delete is timed rather than
refused.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy import Engine

from benchmarks.databases import backends, fresh_database
from benchmarks.inprocess import API_KEY, call
from users_service import models
from users_service.db.bulk import insert_rows
from users_service.db.engine import WRITE_OPTION
from users_service.db.rendering import to_record
from users_service.main import create_app
from users_service.settings import load_settings

ANSWERS = int(os.environ.get("ERASURE_ANSWERS", "200000"))
DELETES = int(os.environ.get("ERASURE_DELETES", "50"))
CHUNK = 20_000
LINKS = getattr(models, "idempotency_key_users", None)  # absent before the index


def fill(engine: Engine) -> list[uuid.UUID]:
    """ANSWERS users, each with its keyed create's stored answer; their ids."""
    now = datetime.now(UTC)
    ids = []
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            for start in range(0, ANSWERS, CHUNK):
                users, keys, links = [], [], []
                for number in range(start, min(start + CHUNK, ANSWERS)):
                    user_id = uuid.uuid4()
                    ids.append(user_id)
                    values = {
                        "id": user_id,
                        "name": f"Stored User {number}",
                        "email": f"stored-{number}@example.com",
                        "age": number % 150,
                        "created_at": now,
                        "updated_at": now,
                        "version": 1,
                    }
                    users.append(values)
                    key = {"caller": "bench", "endpoint": "POST /users", "key": f"k-{number}"}
                    keys.append(
                        {
                            **key,
                            "request_hash": "0" * 64,
                            "created_at": now,
                            "status": 201,
                            "headers": '{"content-type":"application/json"}',
                            "body": orjson.dumps(to_record(values)),
                        }
                    )
                    links.append({"user_id": user_id, **key})
                insert_rows(connection, users, table=models.users)
                insert_rows(connection, keys, table=models.idempotency_keys)
                if LINKS is not None:
                    insert_rows(connection, links, table=LINKS)
    return ids


async def deletes(url: str, ids: list[uuid.UUID]) -> list[float]:
    settings = load_settings(
        database_url=url,
        environment="production",
        api_keys=f"bench:{API_KEY}",
        cursor_secret=secrets.token_hex(16),
        log_level="WARNING",
        db_statement_timeout_ms=0,
    )
    app = create_app(settings)
    times = []
    async with app.router.lifespan_context(app):
        for user_id in ids:
            started = time.perf_counter()
            status = await call(app, "DELETE", f"/users/{user_id}")
            times.append((time.perf_counter() - started) * 1e3)
            assert status == 204, status
    return times


def main() -> int:
    print(f"# DELETE /users/{{id}}: {ANSWERS:,} stored answers, {DELETES} deletes")
    print(f"# {'with' if LINKS is not None else 'without'} idempotency_key_users\n")
    print("| database | median ms | p90 ms | max ms |\n| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="users-erasure-") as work_dir:
        for backend in backends():
            url, engine = fresh_database(backend, Path(work_dir))
            ids = fill(engine)
            engine.dispose()
            step = len(ids) // DELETES
            times = asyncio.run(deletes(url, ids[::step][:DELETES]))
            print(
                f"| {backend} | {statistics.median(times):,.2f} | "
                f"{sorted(times)[int(len(times) * 0.9)]:,.2f} | {max(times):,.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
