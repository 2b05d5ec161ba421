"""Idempotency-Key: a retried create answers what the first one answered.

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
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from users_service.db import write_transaction
from users_service.errors import Problem
from users_service.models import IdempotencyKey
from users_service.pagination import as_utc

logger = logging.getLogger("users_service.idempotency")
keys = IdempotencyKey.__table__  # type: ignore[attr-defined]

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotency-Replayed"
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
TIME_TO_LIVE = timedelta(hours=24)
IN_FLIGHT_TIMEOUT = timedelta(minutes=2)
# Headers an answer is replayed with (besides its body and content type).
KEPT_HEADERS = ("location", "etag", "content-type")


def key_in_use() -> Problem:
    return Problem(
        409,
        "idempotency_key_in_use",
        "A request with this Idempotency-Key is still in progress; retry shortly",
    )


def key_reused() -> Problem:
    return Problem(
        422,
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request body",
        errors=[
            {
                "loc": ["header", HEADER],
                "msg": "key already used with another body",
                "type": "idempotency_key_reused",
            }
        ],
    )


def malformed_key() -> Problem:
    return Problem(
        422,
        "validation_failed",
        "The Idempotency-Key header must be 1-255 visible ASCII characters",
        errors=[
            {
                "loc": ["header", HEADER],
                "msg": "must be 1-255 visible ASCII characters",
                "type": "string_pattern_mismatch",
            }
        ],
    )


def fingerprint(body: bytes) -> str:
    """The request's identity: its JSON, keys sorted, or its bytes if not JSON."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


@dataclass
class StoredAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def response(self) -> Response:
        return Response(
            self.body,
            status_code=self.status,
            headers={**self.headers, REPLAYED_HEADER: "true"},
        )


@dataclass
class Claim:
    caller: str
    endpoint: str
    key: str
    saved: bool = field(default=False)

    def where(self) -> Any:
        return (
            (keys.c.caller == self.caller)
            & (keys.c.endpoint == self.endpoint)
            & (keys.c.key == self.key)
        )


def _answer_of(response: Response) -> dict[str, Any]:
    headers = {name: value for name, value in response.headers.items() if name in KEPT_HEADERS}
    return {
        "status": response.status_code,
        "headers": orjson.dumps(headers).decode(),
        "body": bytes(response.body),
    }


def claim(
    *, session: Session, caller: str, endpoint: str, key: str, request_hash: str
) -> Claim | StoredAnswer:
    """Claim the key for this request, or return the answer it already has.

    Raises 409 while another request holds the key, 422 if the key was used
    with another body.
    """
    now = datetime.now(UTC)
    claimed = Claim(caller, endpoint, key)
    for _ in range(3):  # a row that vanishes between our insert and read: try again
        with write_transaction(session):
            try:
                session.execute(
                    insert(keys).values(
                        caller=caller,
                        endpoint=endpoint,
                        key=key,
                        request_hash=request_hash,
                        created_at=now,
                    )
                )
                return claimed
            except IntegrityError:
                session.rollback()
        with write_transaction(session):
            row = session.execute(select(keys).where(claimed.where()).with_for_update()).first()
            if row is None:
                continue
            age = now - as_utc(row.created_at)
            stale = age > TIME_TO_LIVE or (row.status is None and age > IN_FLIGHT_TIMEOUT)
            if stale:  # expired, or its request died: start afresh
                session.execute(
                    update(keys)
                    .where(claimed.where())
                    .values(
                        request_hash=request_hash,
                        created_at=now,
                        status=None,
                        headers=None,
                        body=None,
                    )
                )
                return claimed
            if row.request_hash != request_hash:
                raise key_reused()
            if row.status is None:
                raise key_in_use()
            return StoredAnswer(row.status, orjson.loads(row.headers), row.body)
    raise key_in_use()


def save_answer(*, session: Session, claimed: Claim, response: Response) -> None:
    """Store the answer in the caller's open transaction."""
    session.execute(update(keys).where(claimed.where()).values(**_answer_of(response)))
    claimed.saved = True


def save_answer_now(*, session: Session, claimed: Claim, response: Response) -> None:
    """Store the answer of a request whose write did not (a 4xx), on its own."""
    with write_transaction(session):
        save_answer(session=session, claimed=claimed, response=response)


def release(*, session: Session, claimed: Claim) -> None:
    """Forget a claim whose request failed with a 5xx, so a retry runs again."""
    with write_transaction(session):
        session.execute(delete(keys).where(claimed.where() & keys.c.status.is_(None)))


def delete_expired(*, session: Session) -> int:
    """Delete the keys older than TIME_TO_LIVE; returns how many.

    Run often (every minute) it deletes what expired since the last run:
    a short statement, on the created_at index.
    """
    cutoff = datetime.now(UTC) - TIME_TO_LIVE
    with write_transaction(session):
        deleted: int = session.execute(delete(keys).where(keys.c.created_at < cutoff)).rowcount  # type: ignore[attr-defined]
    return deleted


SWEEP_EVERY_SECONDS = 60.0


async def sweep_expired_idempotency_keys(engine: Engine) -> None:
    """Delete expired keys every minute, off the request path, until cancelled."""
    while True:
        await asyncio.sleep(SWEEP_EVERY_SECONDS)
        try:
            await run_in_threadpool(_sweep_once, engine)
        except Exception:
            logger.warning("could not delete expired idempotency keys", exc_info=True)


def _sweep_once(engine: Engine) -> None:
    with Session(engine) as session:
        delete_expired(session=session)
