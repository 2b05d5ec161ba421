"""Idempotency-Key: a retried create answers what the first one answered.

This module keeps the keys and their answers in the database; the HTTP flow
around a route (read the header, replay, store) is api/idempotent.py.

A key is claimed in the database before the request runs (its own short
transaction, so a second request with the same key sees it at once and is
told 409 `idempotency_key_in_use`). A success stores its answer in the same
transaction as its write, so the user and the answer that announces it are
committed together: a retry after a crash, or on another replica, replays
that answer and creates nothing. A 4xx the endpoint gives is stored after
the fact; a 5xx releases the key (once the database answers again, if it
was away), so the retry runs again.

Keys belong to (caller, endpoint); they expire after 24 hours (treated as
absent from then on, and deleted by a background sweep off the request
path). A claim whose request never answered (its process died) is taken
over by a retry after IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS (default
IN_FLIGHT_TIMEOUT); the claim's created_at fences it, so a request that
was taken over can neither store its answer nor release the new claim.

What one caller may keep is bounded (`KeyUsage`): so many keys, so many
bytes of answers; past either, a new key is refused 429 while the keys
already stored are still replayed. A 4xx answer over a small size is not
kept at all (the key is released, as after a 5xx: the request wrote
nothing, so its retry runs again). The sweep deletes in small batches, on a
worker thread, so that a day's worth of expired keys never holds up the
event loop.

A success's answer is stored with a link to each user it shows
(idempotency_key_users), so that deleting a user erases the answers that
show them by an index look-up (`erase_answers_with`), not by reading every
answer; a key's links go with it (ON DELETE CASCADE).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import orjson
from sqlalchemy import Engine, Table, bindparam, delete, func, insert, select, true, tuple_, update
from sqlalchemy.dialects import postgresql

from users_service.db.database import Connection, Database
from users_service.db.engine import WRITE_OPTION
from users_service.db.errors import DatabaseUnavailable, UniqueViolation
from users_service.db.rendering import as_utc
from users_service.db.statements import compiled
from users_service.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    IdempotencyQuotaExceeded,
)
from users_service.models import idempotency_key_users as links
from users_service.models import idempotency_keys as keys
from users_service.settings import Settings

logger = logging.getLogger("users_service.idempotency")

HEADER = "Idempotency-Key"
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
TIME_TO_LIVE = timedelta(hours=24)
IN_FLIGHT_TIMEOUT = timedelta(minutes=2)


def fingerprint(body: bytes) -> str:
    """The request's identity: its JSON, keys sorted, or its bytes if not JSON."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


@dataclass
class StoredAnswer:
    """The first answer to a key: status, the headers kept, body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Claim:
    caller: str
    endpoint: str
    key: str
    # When this request claimed the key (its row's created_at): a release
    # removes the row only while it is still this request's claim.
    claimed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    saved: bool = field(default=False)

    def where(self) -> dict[str, str]:
        """The values that pick this key's row (see _key_condition)."""
        return {"caller": self.caller, "endpoint": self.endpoint, "key": self.key}


def _key_condition(table: Table = keys) -> Any:
    """The row of `table` (the keys, or their links) for :caller, :endpoint, :key."""
    return (
        (table.c.caller == bindparam("caller"))
        & (table.c.endpoint == bindparam("endpoint"))
        & (table.c.key == bindparam("key"))
    )


@dataclass
class Usage:
    """One caller's stored keys and the bytes of their answers' bodies."""

    keys: int = 0
    bytes: int = 0


# How often, at most, the exact usage of a caller at its cap is counted
# again (seconds): its other requests meanwhile are refused from memory.
RECOUNT_SECONDS = 1.0


class KeyUsage:
    """What each caller keeps, as this process knows it, against the caps.

    Counting rows on every request would cost a scan of the caller's keys:
    instead, a request checks an estimate in memory (a dictionary look-up),
    and only a caller seen for the first time, or at its cap, is counted
    exactly (at most once a RECOUNT_SECONDS per caller, on the database,
    off the event loop). The estimate grows with each key this process
    stores, and every caller is counted again after each sweep, which is
    when other replicas' keys and deleted ones show: with several replicas,
    a caller may go over a cap by what the others stored since the last
    sweep (IDEMPOTENCY_SWEEP_SECONDS), and by one answer's size in any case.
    """

    def __init__(self, *, max_keys: int, max_bytes: int, max_error_answer_bytes: int) -> None:
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self.max_error_answer_bytes = max_error_answer_bytes
        self._usage: dict[str, Usage] = {}
        self._counted_at: dict[str, float] = {}
        self._counting: asyncio.Lock | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> KeyUsage:
        return cls(
            max_keys=settings.idempotency_max_keys_per_caller,
            max_bytes=settings.idempotency_max_bytes_per_caller,
            max_error_answer_bytes=settings.idempotency_max_error_answer_bytes,
        )

    def _under_caps(self, usage: Usage) -> bool:
        return (not self.max_keys or usage.keys < self.max_keys) and (
            not self.max_bytes or usage.bytes < self.max_bytes
        )

    async def admits(self, database: Database, caller: str) -> bool:
        """Whether `caller` may store one more key."""
        if not (self.max_keys or self.max_bytes):
            return True
        usage = self._usage.get(caller)
        if usage is not None and self._under_caps(usage):
            return True  # the hot path
        if self._counting is None:
            self._counting = asyncio.Lock()
        async with self._counting:
            usage = self._usage.get(caller)
            counted_at = self._counted_at.get(caller, float("-inf"))
            if usage is None or time.monotonic() - counted_at >= RECOUNT_SECONDS:
                usage = await count_usage(database, caller)
                self._usage[caller] = usage
                self._counted_at[caller] = time.monotonic()
        return self._under_caps(usage)

    def keeps_answer(self, status: int, size: int) -> bool:
        """Whether an answer is stored: every success, and the others up to
        IDEMPOTENCY_MAX_ERROR_ANSWER_BYTES (never a 5xx)."""
        if status >= 500:
            return False
        return status < 300 or size <= self.max_error_answer_bytes

    def claimed(self, caller: str) -> None:
        if (usage := self._usage.get(caller)) is not None:
            usage.keys += 1

    def answered(self, caller: str, size: int) -> None:
        if (usage := self._usage.get(caller)) is not None:
            usage.bytes += size

    def released(self, caller: str) -> None:
        if (usage := self._usage.get(caller)) is not None:
            usage.keys = max(0, usage.keys - 1)

    def recounted(self, counted: dict[str, Usage]) -> None:
        """Every caller's exact usage (after a sweep; a caller left out has none)."""
        now = time.monotonic()
        self._usage = {caller: Usage() for caller in self._usage} | counted
        self._counted_at = dict.fromkeys(self._usage, now)


def _live_keys() -> Any:
    """The keys that have not expired (the sweep may not have deleted the others yet)."""
    return keys.c.created_at >= bindparam("cutoff")


async def count_usage(database: Database, caller: str) -> Usage:
    """One caller's keys and answer bytes, counted (a read that may scan its keys)."""
    async with database.read(heavy=True) as connection:
        statement = compiled(
            connection,
            "count_key_usage",
            lambda: (
                select(func.count(), func.coalesce(func.sum(func.length(keys.c.body)), 0))
                .where(keys.c.caller == bindparam("caller"))
                .where(_live_keys())
            ),
        )
        row = await connection.one(
            statement, {"caller": caller, "cutoff": datetime.now(UTC) - TIME_TO_LIVE}
        )
    assert row is not None
    return Usage(int(row[0]), int(row[1]))


def count_all_usage(engine: Engine) -> dict[str, Usage]:
    """Every caller's keys and answer bytes (blocking: run on a worker thread)."""
    statement = (
        select(keys.c.caller, func.count(), func.coalesce(func.sum(func.length(keys.c.body)), 0))
        .where(_live_keys())
        .group_by(keys.c.caller)
    )
    with engine.connect() as connection:
        rows = connection.execute(statement, {"cutoff": datetime.now(UTC) - TIME_TO_LIVE})
        return {caller: Usage(int(count), int(size)) for caller, count, size in rows}


async def claim(
    *,
    database: Database,
    caller: str,
    endpoint: str,
    key: str,
    request_hash: str,
    usage: KeyUsage | None = None,
    in_flight_timeout: timedelta = IN_FLIGHT_TIMEOUT,
) -> Claim | StoredAnswer:
    """Claim the key for this request, or return the answer it already has.

    Raises 409 while another request holds the key, 422 if the key was used
    with another body, 429 if it is a new key and the caller is at its cap
    (`usage`).
    """
    now = datetime.now(UTC)
    admitted = usage is None or await usage.admits(database, caller)
    claimed = Claim(caller, endpoint, key, claimed_at=now)
    values = {
        **claimed.where(),
        "request_hash": request_hash,
        "created_at": now,
        # In flight: no answer yet.
        "status": None,
        "headers": None,
        "body": None,
    }
    for _ in range(3):  # a row that vanishes between our insert and read: try again
        if admitted:
            try:
                async with database.transaction() as connection:
                    insert_key = compiled(connection, "claim_key", lambda: insert(keys))
                    await connection.run(insert_key, values)
                if usage is not None:
                    usage.claimed(caller)
                return claimed
            except UniqueViolation:
                pass
            except DatabaseUnavailable:
                # The claim may have committed with its answer lost (the
                # database went away during COMMIT): undo it once it is back.
                release_in_background(database=database, claimed=claimed)
                raise
        async with database.transaction() as connection:
            select_key = compiled(
                connection,
                "select_key",
                lambda: (
                    select(
                        keys.c.created_at,
                        keys.c.request_hash,
                        keys.c.status,
                        keys.c.headers,
                        keys.c.body,
                    )
                    .where(_key_condition())
                    .with_for_update()
                ),
            )
            row = await connection.one(select_key, claimed.where())
            if row is None:
                if not admitted:  # a new key, and the caller has no room for it
                    raise IdempotencyQuotaExceeded()
                continue
            created_at, stored_hash, status, headers, body = select_key.decode(row)
            age = now - as_utc(created_at)
            stale = age > TIME_TO_LIVE or (status is None and age > in_flight_timeout)
            if stale:  # expired, or its request died: start afresh
                restart = compiled(
                    connection,
                    "restart_key",
                    lambda: (
                        update(keys)
                        .where(_key_condition())
                        .values(
                            request_hash=bindparam("new_hash"),
                            created_at=bindparam("new_created_at"),
                            status=None,
                            headers=None,
                            body=None,
                        )
                    ),
                )
                await connection.run(
                    restart, {**claimed.where(), "new_hash": request_hash, "new_created_at": now}
                )
                if status is not None:  # the expired answer's links go with it
                    unlink = compiled(
                        connection,
                        "unlink_key",
                        lambda: delete(links).where(_key_condition(links)),
                    )
                    await connection.run(unlink, claimed.where())
                return claimed
            if stored_hash != request_hash:
                raise IdempotencyKeyReused(HEADER)
            if status is None:
                raise IdempotencyKeyInUse()
            return StoredAnswer(status, orjson.loads(headers), bytes(body))
    raise IdempotencyKeyInUse()


def _save_statement() -> Any:
    return (
        update(keys)
        .where(_key_condition() & (keys.c.created_at == bindparam("claimed_at")))
        .values(
            status=bindparam("new_status"),
            headers=bindparam("new_headers"),
            body=bindparam("new_body"),
        )
    )


def _save_with_links_statement() -> Any:
    """PostgreSQL: the answer's UPDATE and its links' INSERT in one statement
    (one round trip, ~150 µs here): a link per id of :user_ids, for the key
    the UPDATE returns, so none when the claim is no longer this request's.
    The statement's row count is the links'."""
    saved = _save_statement().returning(keys.c.caller, keys.c.endpoint, keys.c.key)
    saved_key = saved.cte("saved_answer")
    shown = (
        func.unnest(bindparam("user_ids", type_=postgresql.ARRAY(links.c.user_id.type)))
        .table_valued("user_id")
        .render_derived(name="shown")
    )
    rows = select(shown.c.user_id, saved_key.c.caller, saved_key.c.endpoint, saved_key.c.key)
    rows = rows.select_from(saved_key.join(shown, true()))
    return insert(links).from_select(["user_id", "caller", "endpoint", "key"], rows)


async def save_answer(
    *,
    connection: Connection,
    claimed: Claim,
    answer: StoredAnswer,
    shows: Sequence[uuid.UUID] = (),
) -> None:
    """Store the answer in the caller's open transaction, with a link to
    each user it `shows` (by id), which is how a delete of one of them finds
    it (`erase_answers_with`).

    Raises 409 `idempotency_key_in_use` (and the caller's transaction, its
    write with it, is rolled back) when the claim is no longer this
    request's: a retry took it over after the in-flight timeout."""
    values = {
        **claimed.where(),
        "claimed_at": claimed.claimed_at,
        "new_status": answer.status,
        "new_headers": orjson.dumps(answer.headers).decode(),
        "new_body": answer.body,
    }
    if shows and connection.dialect.name == "postgresql":
        statement = compiled(connection, "save_answer_with_links", _save_with_links_statement)
        linked = await connection.run(statement, {**values, "user_ids": list(shows)})
        if linked != len(shows):
            raise IdempotencyKeyInUse()
        claimed.saved = True
        return
    statement = compiled(connection, "save_answer", _save_statement)
    if await connection.run(statement, values) != 1:
        raise IdempotencyKeyInUse()
    if shows:
        link = compiled(connection, "link_answer", lambda: insert(links))
        key = claimed.where()
        await connection.run_many(link, [{"user_id": user_id, **key} for user_id in shows])
    claimed.saved = True


async def save_answer_now(*, database: Database, claimed: Claim, answer: StoredAnswer) -> None:
    """Store the answer of a request whose write did not (a 4xx), on its own."""
    async with database.transaction() as connection:
        await save_answer(connection=connection, claimed=claimed, answer=answer)


async def release(*, database: Database, claimed: Claim) -> None:
    """Forget a claim whose request failed with a 5xx, so a retry runs again.

    When the database cannot be reached (the usual cause of the 5xx), the
    claim is released in the background as soon as it is back, so that a
    retry is not told 409 `idempotency_key_in_use` until IN_FLIGHT_TIMEOUT;
    DatabaseUnavailable is raised all the same.
    """
    try:
        await _delete_claim(database, claimed)
    except DatabaseUnavailable:
        release_in_background(database=database, claimed=claimed)
        raise


async def _delete_claim(database: Database, claimed: Claim) -> None:
    async with database.transaction() as connection:
        statement = compiled(
            connection,
            "release_key",
            lambda: delete(keys).where(
                _key_condition()
                & keys.c.status.is_(None)
                & (keys.c.created_at == bindparam("claimed_at"))
            ),
        )
        await connection.run(statement, {**claimed.where(), "claimed_at": claimed.claimed_at})


# Seconds between two attempts to release a claim while the database is away.
RELEASE_RETRY_SECONDS = 0.5
_releasing: set[asyncio.Task[None]] = set()


def release_in_background(*, database: Database, claimed: Claim) -> None:
    """Release `claimed` once the database answers again (tried every
    RELEASE_RETRY_SECONDS until IN_FLIGHT_TIMEOUT, after which a retry
    takes the claim over anyway). Only this request's claim is removed:
    never one a retry made since, nor an answer."""

    async def keep_trying() -> None:
        give_up = asyncio.get_running_loop().time() + IN_FLIGHT_TIMEOUT.total_seconds()
        while asyncio.get_running_loop().time() < give_up:
            await asyncio.sleep(RELEASE_RETRY_SECONDS)
            try:
                await _delete_claim(database, claimed)
            except DatabaseUnavailable:
                continue
            except Exception:
                logger.warning("could not release an idempotency key", exc_info=True)
            return

    task = asyncio.get_running_loop().create_task(keep_trying())
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)


# Expired keys deleted per transaction by the sweep: each batch is a short
# transaction (SQLite: it holds the write lock for a few milliseconds), and
# the event loop never runs it. 300k expired keys took 8.5 s of the event
# loop as one DELETE; see tests/system/test_idempotency_sweep.py.
SWEEP_BATCH = 1000
# A pause between two batches, so that the sweep never keeps the database
# (SQLite's write lock) from the requests for long.
SWEEP_PAUSE_SECONDS = 0.01


def _delete_expired_statement(dialect: str, limit: int) -> Any:
    """DELETE the `limit` oldest keys created before :cutoff."""
    expired = keys.c.created_at < bindparam("cutoff")
    if dialect in ("mysql", "mariadb"):
        # MariaDB refuses LIMIT in an IN subquery; its DELETE takes one itself.
        return (
            delete(keys).where(expired).with_dialect_options(mysql_limit=limit, mariadb_limit=limit)
        )
    primary_key = (keys.c.caller, keys.c.endpoint, keys.c.key)
    oldest = select(*primary_key).where(expired).order_by(keys.c.created_at).limit(limit)
    # `expired` again: a key restarted meanwhile (created_at is new) stays.
    return delete(keys).where(tuple_(*primary_key).in_(oldest) & expired)


def _delete_expired_batch(engine: Engine, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` keys older than `cutoff`, oldest first, in one
    transaction; returns how many (blocking: run on a worker thread)."""
    statement = _delete_expired_statement(engine.dialect.name, limit)
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            deleted: int = connection.execute(statement, {"cutoff": cutoff}).rowcount
    return deleted


async def delete_expired(*, database: Database, batch: int = SWEEP_BATCH) -> int:
    """Delete the keys older than TIME_TO_LIVE, `batch` at a time, each batch
    on a worker thread; returns how many.

    Run every minute it deletes what expired since the last run: one short
    batch, on the created_at index.
    """
    cutoff = datetime.now(UTC) - TIME_TO_LIVE
    deleted = 0
    while True:
        count = await anyio.to_thread.run_sync(
            _delete_expired_batch, database.engine, cutoff, batch
        )
        deleted += count
        if count < batch:
            return deleted
        await asyncio.sleep(SWEEP_PAUSE_SECONDS)


async def erase_answers_with(*, connection: Connection, user_id: uuid.UUID) -> None:
    """Delete the stored answers that show the user (a deleted user's name and
    email must not outlive them), in the delete's transaction. They are
    found through their links (idempotency_key_users, by user_id: an index
    look-up, no answer is read); the links go with them (ON DELETE CASCADE).
    Only success answers show a user: no error answer holds an existing
    user's name, email or id (docs/design.md)."""
    dialect = connection.dialect.name
    statement = compiled(connection, "erase_answers", lambda: _answers_with(dialect))
    await connection.run(statement, {"user_id": user_id})


def _answers_with(dialect: str) -> Any:
    shown = links.c.user_id == bindparam("user_id")
    key_columns = ("caller", "endpoint", "key")
    if dialect in ("mysql", "mariadb"):
        # DELETE ... USING the links: MariaDB reads every answer for the
        # IN (subquery) form (its DELETE does not turn it into a join).
        joined = [keys.c[name] == links.c[name] for name in key_columns]
        return delete(keys).where(*joined, shown)
    linked = select(*(links.c[name] for name in key_columns)).where(shown)
    return delete(keys).where(tuple_(*(keys.c[name] for name in key_columns)).in_(linked))


async def sweep_once(database: Database, usage: KeyUsage) -> int:
    """Delete the expired keys, then count every caller's usage again;
    returns how many keys were deleted."""
    deleted = await delete_expired(database=database)
    usage.recounted(await anyio.to_thread.run_sync(count_all_usage, database.engine))
    return deleted


async def sweep_expired_idempotency_keys(
    database: Database, usage: KeyUsage, every_seconds: float
) -> None:
    """Sweep every `every_seconds` (IDEMPOTENCY_SWEEP_SECONDS), until cancelled."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            if deleted := await sweep_once(database, usage):
                logger.info("deleted %d expired idempotency keys", deleted)
        except Exception:
            logger.warning("could not delete expired idempotency keys", exc_info=True)
