"""Idempotency-Key: a retried create answers what the first one answered.

This module keeps the keys and their answers in the database; the HTTP flow
around a route (read the header, replay, store) is api/idempotent.py.

A key is claimed in the database before the request runs (its own short
transaction, so a second request with the same key sees it at once and is
told 409 `idempotency_key_in_use`). A success stores its answer in the same
transaction as its write, so the user and the answer that announces it are
committed together: a retry after a crash, or on another replica, replays
that answer and creates nothing. A 4xx the endpoint gives is stored after
the fact; a 5xx releases the key, so the retry runs again.

Keys belong to (caller, endpoint); they expire after 24 hours (treated as
absent from then on, and deleted by a background sweep off the request
path). A claim whose request never answered (its process died) is taken
over by a retry after IN_FLIGHT_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import LargeBinary, bindparam, delete, func, insert, select, update

from users_service.db.database import Connection, Database
from users_service.db.errors import UniqueViolation
from users_service.db.rendering import as_utc
from users_service.db.statements import compiled
from users_service.errors import IdempotencyKeyInUse, IdempotencyKeyReused
from users_service.models import idempotency_keys as keys

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
    saved: bool = field(default=False)

    def where(self) -> dict[str, str]:
        """The values that pick this key's row (see _key_condition)."""
        return {"caller": self.caller, "endpoint": self.endpoint, "key": self.key}


def _key_condition() -> Any:
    return (
        (keys.c.caller == bindparam("caller"))
        & (keys.c.endpoint == bindparam("endpoint"))
        & (keys.c.key == bindparam("key"))
    )


async def claim(
    *, database: Database, caller: str, endpoint: str, key: str, request_hash: str
) -> Claim | StoredAnswer:
    """Claim the key for this request, or return the answer it already has.

    Raises 409 while another request holds the key, 422 if the key was used
    with another body.
    """
    now = datetime.now(UTC)
    claimed = Claim(caller, endpoint, key)
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
        try:
            async with database.transaction() as connection:
                insert_key = compiled(connection, "claim_key", lambda: insert(keys))
                await connection.run(insert_key, values)
            return claimed
        except UniqueViolation:
            pass
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
                continue
            created_at, stored_hash, status, headers, body = select_key.decode(row)
            age = now - as_utc(created_at)
            stale = age > TIME_TO_LIVE or (status is None and age > IN_FLIGHT_TIMEOUT)
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
                return claimed
            if stored_hash != request_hash:
                raise IdempotencyKeyReused(HEADER)
            if status is None:
                raise IdempotencyKeyInUse()
            return StoredAnswer(status, orjson.loads(headers), bytes(body))
    raise IdempotencyKeyInUse()


async def save_answer(*, connection: Connection, claimed: Claim, answer: StoredAnswer) -> None:
    """Store the answer in the caller's open transaction."""
    statement = compiled(
        connection,
        "save_answer",
        lambda: (
            update(keys)
            .where(_key_condition())
            .values(
                status=bindparam("new_status"),
                headers=bindparam("new_headers"),
                body=bindparam("new_body"),
            )
        ),
    )
    await connection.run(
        statement,
        {
            **claimed.where(),
            "new_status": answer.status,
            "new_headers": orjson.dumps(answer.headers).decode(),
            "new_body": answer.body,
        },
    )
    claimed.saved = True


async def save_answer_now(*, database: Database, claimed: Claim, answer: StoredAnswer) -> None:
    """Store the answer of a request whose write did not (a 4xx), on its own."""
    async with database.transaction() as connection:
        await save_answer(connection=connection, claimed=claimed, answer=answer)


async def release(*, database: Database, claimed: Claim) -> None:
    """Forget a claim whose request failed with a 5xx, so a retry runs again."""
    async with database.transaction() as connection:
        statement = compiled(
            connection,
            "release_key",
            lambda: delete(keys).where(_key_condition() & keys.c.status.is_(None)),
        )
        await connection.run(statement, claimed.where())


async def delete_expired(*, database: Database) -> int:
    """Delete the keys older than TIME_TO_LIVE; returns how many.

    Run often (every minute) it deletes what expired since the last run:
    a short statement, on the created_at index.
    """
    cutoff = datetime.now(UTC) - TIME_TO_LIVE
    async with database.transaction() as connection:
        statement = compiled(
            connection,
            "delete_expired_keys",
            lambda: delete(keys).where(keys.c.created_at < bindparam("cutoff")),
        )
        return await connection.run(statement, {"cutoff": cutoff})


async def erase_answers_with(*, connection: Connection, user_id: uuid.UUID) -> None:
    """Delete the stored answers that show the user (a deleted user's name and
    email must not outlive them), in the delete's transaction. Reads every
    stored answer: keys live 24 hours at most."""
    dialect = connection.dialect.name
    statement = compiled(connection, "erase_answers", lambda: _answers_with(dialect))
    pattern = str(user_id) if dialect == "sqlite" else f"%{user_id}%"
    await connection.run(statement, {"pattern": pattern.encode()})


def _answers_with(dialect: str) -> Any:
    pattern = bindparam("pattern", type_=LargeBinary)
    if dialect == "sqlite":  # SQLite's LIKE does not look into blobs; instr does
        return delete(keys).where(func.instr(keys.c.body, pattern) > 0)
    return delete(keys).where(keys.c.body.op("LIKE")(pattern))


SWEEP_EVERY_SECONDS = 60.0


async def sweep_expired_idempotency_keys(database: Database) -> None:
    """Delete expired keys every minute, until cancelled."""
    while True:
        await asyncio.sleep(SWEEP_EVERY_SECONDS)
        try:
            await delete_expired(database=database)
        except Exception:
            logger.warning("could not delete expired idempotency keys", exc_info=True)
