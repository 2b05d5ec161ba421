"""SQLite's group commit (db/sqlite.py) on a real database file: the order
in which a batch commits and the batch before is answered, the write turn,
and a commit whose task is cancelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.databases import create_fresh_database, migrate
from users_service import crud
from users_service.changes import ChangeSource
from users_service.db.database import create_database
from users_service.db.engine import create_db_engine
from users_service.db.sqlite import SQLiteDatabase, _WriteTurn
from users_service.models import UserCreate
from users_service.settings import load_settings

SOURCE = ChangeSource("test", "group-commit")


class RecordingCommitThread(ThreadPoolExecutor):
    """The commit's thread, noting (on the event loop, as it is handed each
    COMMIT) "commit" in `events`; the first COMMIT waits `first_delay`
    seconds in its thread first, so that writers queue behind it."""

    def __init__(self, events: list[str], first_delay: float) -> None:
        super().__init__(1)
        self.events = events
        self.first_delay = first_delay

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.events.append("commit")
        if self.events.count("commit") == 1:
            delay = self.first_delay

            def slow_first(*args: Any, **kwargs: Any) -> Any:
                time.sleep(delay)
                return fn(*args, **kwargs)

            return super().submit(slow_first, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)


@asynccontextmanager
async def started(
    database: SQLiteDatabase, events: list[str], first_delay: float
) -> AsyncIterator[None]:
    """`database` started, with a RecordingCommitThread for its commits, then closed."""
    await database.start()
    assert database._commit_thread is not None
    database._commit_thread.shutdown()
    database._commit_thread = RecordingCommitThread(events, first_delay)
    try:
        yield
    finally:
        await database.close()


def sqlite_database(tmp_path: Path) -> SQLiteDatabase:
    url = create_fresh_database("sqlite", tmp_path, "_group_commit")
    migrate(url)
    settings = load_settings(database_url=url, environment="test")
    database = create_database(create_db_engine(settings), settings)
    assert isinstance(database, SQLiteDatabase)
    return database


async def create(database: SQLiteDatabase, n: int, events: list[str], label: str) -> None:
    async with database.transaction() as connection:
        data = UserCreate(name=f"User {n}", email=f"user{n}@example.com", age=30)
        await crud.create_user(connection=connection, data=data, source=SOURCE)
    events.append(label)


async def a_create_committing(
    database: SQLiteDatabase, events: list[str], label: str
) -> asyncio.Task[None]:
    """A create (noting `label` once answered) whose batch's COMMIT, the
    slow first one, has been handed to the commit's thread."""
    task = asyncio.create_task(create(database, 0, events, label))
    deadline = time.monotonic() + 5
    while "commit" not in events:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)
    return task


def count_users(database: SQLiteDatabase) -> int:
    with database.engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT count(*) FROM users").scalar_one())


def test_the_next_batch_is_committing_before_the_batch_before_is_answered(
    tmp_path: Path,
) -> None:
    """Writers that queued behind a commit all run when it ends, and their
    batch's COMMIT is handed to its thread before the batch before is
    answered: the fsync runs while the event loop writes those answers."""
    database = sqlite_database(tmp_path)
    events: list[str] = []

    async def scenario() -> None:
        async with started(database, events, first_delay=0.2):
            first = await a_create_committing(database, events, "batch 1 answered")
            queued = [
                asyncio.create_task(create(database, n, events, "batch 2 answered"))
                for n in range(1, 6)
            ]
            await asyncio.gather(first, *queued)

    asyncio.run(scenario())
    assert events == ["commit", "commit", "batch 1 answered"] + ["batch 2 answered"] * 5
    assert count_users(database) == 6


def test_a_release_of_the_write_turn_wakes_every_waiter_and_a_cancelled_one_is_forgotten() -> None:
    async def scenario() -> None:
        turn = _WriteTurn()
        order: list[str] = []

        async def take(name: str) -> None:
            async with turn:
                order.append(name)

        await turn.__aenter__()
        waiters = {name: asyncio.create_task(take(name)) for name in ("a", "b", "c", "d")}
        await asyncio.sleep(0)  # each is waiting now
        waiters["b"].cancel()
        await asyncio.sleep(0)
        assert waiters["b"].cancelled() and order == []
        await turn.__aexit__(None, None, None)
        await asyncio.sleep(0)  # one turn of the loop: every waiter has run
        assert order == ["a", "c", "d"]
        assert all(waiters[name].done() for name in "acd")

    asyncio.run(scenario())


def test_a_cancelled_commit_finishes_its_commit_and_answers_its_batch(tmp_path: Path) -> None:
    """The COMMIT holds the writer connection in its thread: cancelling the
    commit's task waits for the COMMIT to end, and the batch's writers are
    answered with its outcome (here: committed), not left waiting."""
    database = sqlite_database(tmp_path)
    events: list[str] = []

    async def scenario() -> None:
        async with started(database, events, first_delay=0.3):
            writer = await a_create_committing(database, events, "answered")
            committing = database._committing
            assert committing is not None
            committing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await committing
            assert count_users(database) == 1  # the COMMIT ended before the task did
            await asyncio.wait_for(writer, timeout=5)
            assert events == ["commit", "answered"]
            await create(database, 1, events, "the next write")  # the turn is free

    asyncio.run(scenario())
