"""Reads that may scan are bounded: in time on every database (SQLite too),
and in how many run at once; one caller cannot hold every turn.

SQLite has no statement timeout of its own: a read that may scan runs on a
worker thread with a progress handler that interrupts it after
DB_STATEMENT_TIMEOUT_MS (PostgreSQL and MariaDB cancel it themselves, see
test_db_statement_timeout.py). A caller with more than
MAX_REQUESTS_IN_FLIGHT_PER_CALLER requests in flight gets 429 `rate_limited`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import create_engine, pool, select

from tests.databases import create_fresh_database, migrate
from tests.helpers import READER, READER_KEY, WRITER, WRITER_KEY, assert_problem
from users_service.db.engine import create_db_engine
from users_service.main import create_app
from users_service.models import users
from users_service.seed import seed_users
from users_service.settings import load_settings
from users_service_client import AsyncUsersClient


def app_on(database_url: str, **settings: Any) -> FastAPI:
    return create_app(
        load_settings(
            database_url=database_url,
            environment="test",
            log_level="WARNING",
            api_keys=f"writer:{WRITER_KEY}",
            api_read_keys=f"reader:{READER_KEY}",
            **settings,
        )
    )


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client,
    ):
        yield client
    app.state.database.engine.dispose()


def test_a_scanning_sqlite_read_past_the_statement_timeout_is_503(tmp_path: Path) -> None:
    url = create_fresh_database("sqlite", tmp_path)
    migrate(url)
    engine = create_db_engine(load_settings(database_url=url, environment="test"))
    seed_users(engine, 50_000, progress=False)
    engine.dispose()
    app = app_on(url, db_statement_timeout_ms=1)

    async def scenario() -> None:
        async with served(app) as client:
            # Counting the users whose name holds two characters tests every
            # name (no trigram for the index): 14-22 ms for this request
            # without a limit. A longer name that matches nobody is answered
            # by the first window and the index, its reads near the 1 ms
            # limit (2-3 ms for the whole request): not a test of the limit.
            scanning = await client.get(
                "/users", params={"name": "zx", "include_total": "true"}, headers=READER
            )
            problem = assert_problem(scanning, 503, "service_unavailable")
            assert "took too long" in problem["detail"]
            assert scanning.headers["retry-after"].isdigit()
            # The next requests, cheap or not, are served.
            page = await client.get("/users", params={"limit": 2}, headers=READER)
            assert page.status_code == 200, page.text
            user_id = page.json()["items"][0]["id"]
            one = await client.get(f"/users/{user_id}", headers=READER)
            assert one.status_code == 200, one.text

    asyncio.run(scenario())


@contextmanager
def writes_blocked(backend: str, database_url: str, user_id: str) -> Iterator[Callable[[], None]]:
    """Hold, from a connection of the test's own, what a write of `user_id`
    must wait for: SQLite's write lock, the user's row elsewhere."""
    release = threading.Event()
    locked = threading.Event()

    def hold() -> None:
        if backend == "sqlite":
            lock = sqlite3.connect(database_url.removeprefix("sqlite:///"))
            lock.isolation_level = None
            lock.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(30)
            lock.execute("ROLLBACK")
            lock.close()
            return
        engine = create_engine(
            load_settings(database_url=database_url).sqlalchemy_url, poolclass=pool.NullPool
        )
        with engine.connect() as connection:
            connection.execute(
                select(users).where(users.c.id == uuid.UUID(user_id)).with_for_update()
            )
            locked.set()
            release.wait(30)
            connection.rollback()
        engine.dispose()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10), "the test could not take its lock"
        yield release.set  # to let the writes through before the block ends
    finally:
        release.set()
        holder.join()


def test_a_caller_past_its_requests_in_flight_gets_429_and_others_are_served(
    backend: str, tmp_path: Path
) -> None:
    url = create_fresh_database(backend, tmp_path, "_in_flight")
    migrate(url)
    app = app_on(url, max_requests_in_flight_per_caller=1)

    async def scenario() -> None:
        async with served(app) as client:
            created = await client.post(
                "/users", json={"name": "Ada", "email": "ada@x.io", "age": 36}, headers=WRITER
            )
            user_id = created.json()["id"]
            with writes_blocked(backend, url, user_id):
                stuck = asyncio.create_task(
                    client.patch(f"/users/{user_id}", json={"age": 37}, headers=WRITER)
                )
                await asyncio.sleep(0.5)  # the PATCH takes the writer's one place, and waits
                assert not stuck.done(), stuck.result()
                refused = await client.get("/users", headers=WRITER)
                assert_problem(refused, 429, "rate_limited")
                assert refused.headers["retry-after"] == "1"
                other = await client.get(f"/users/{user_id}", headers=READER)
                assert other.status_code == 200, other.text
                assert (await client.get("/healthz")).status_code == 200
            done = await stuck
            assert done.status_code == 200, done.text
            again = await client.get("/users", headers=WRITER)
            assert again.status_code == 200

    asyncio.run(scenario())


def test_the_client_retries_a_429_after_its_retry_after(backend: str, tmp_path: Path) -> None:
    url = create_fresh_database(backend, tmp_path, "_client_429")
    migrate(url)
    app = app_on(url, max_requests_in_flight_per_caller=1)

    async def scenario() -> None:
        async with served(app) as client:
            created = await client.post(
                "/users", json={"name": "Ada", "email": "ada@x.io", "age": 36}, headers=WRITER
            )
            user_id = created.json()["id"]
            sleeps: list[float] = []
            with writes_blocked(backend, url, user_id) as unblock:
                stuck = asyncio.create_task(
                    client.patch(f"/users/{user_id}", json={"age": 37}, headers=WRITER)
                )
                await asyncio.sleep(0.5)  # the PATCH takes the writer's one place, and waits
                assert not stuck.done(), stuck.result()

                async def sleep(seconds: float) -> None:
                    sleeps.append(seconds)
                    if len(sleeps) == 2:  # the writer's PATCH may finish now
                        unblock()
                        await stuck

                users_client = AsyncUsersClient(
                    "http://test",
                    api_key=WRITER_KEY,
                    transport=httpx.ASGITransport(app),
                    sleep=sleep,
                )
                async with users_client:
                    grace = await users_client.create_user(name="Grace", email="g@x.io", age=85)
            assert grace.name == "Grace"
            assert sleeps == [1.0, 1.0]  # Retry-After: 1, twice, then served

    asyncio.run(scenario())
