"""`users-service relay`: the change log, published to NATS JetStream.

One message per change, in seq order, on `<RELAY_SUBJECT_PREFIX>.<action>`
(`users.changes.created`, `.updated`, `.deleted`); its body is the change as
GET /users/changes shows it. Each message carries `Nats-Msg-Id:
users-change-<seq>`, so JetStream drops a message it already has (within
the stream's duplicate window, RELAY_DUPLICATE_WINDOW_SECONDS).

The relay keeps its position (the last seq the broker acknowledged) in the
database, in change_positions under `relay:<stream>`, written after the
broker acknowledged a page of messages. So:

- the broker down: publishing fails, the relay retries from its position
  with a growing pause (at most RETRY_MAX_SECONDS) until the broker is back;
  writes go on meanwhile, their changes wait in the log;
- the relay killed at any point: it restarts from its position and
  publishes again what was acknowledged but not yet recorded; JetStream
  drops those repeats by their Msg-Id.

Messages are published one at a time, each acknowledged before the next,
so the stream holds them in seq order. Run one relay per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, update

from users_service import changes
from users_service.db.database import Database, create_database
from users_service.db.engine import create_db_engine
from users_service.db.errors import UniqueViolation
from users_service.db.statements import compiled
from users_service.models import change_positions
from users_service.settings import Settings

logger = logging.getLogger("users_service.relay")

PAGE = 500
IDLE_POLL_SECONDS = 0.2  # how often an idle relay looks for new changes
RETRY_MAX_SECONDS = 5.0
PUBLISH_TIMEOUT_SECONDS = 5.0


def message_id(seq: int) -> str:
    return f"users-change-{seq}"


@dataclass(frozen=True)
class RelayConfig:
    nats_url: str
    stream: str
    subject_prefix: str
    duplicate_window_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        return cls(
            settings.relay_nats_url,
            settings.relay_stream,
            settings.relay_subject_prefix,
            settings.relay_duplicate_window_seconds,
        )

    @property
    def position_name(self) -> str:
        return f"relay:{self.stream}"


async def read_position(database: Database, name: str) -> int | None:
    async with database.read() as connection:
        return await changes.stored_position(connection, name)


async def store_position(database: Database, name: str, seq: int) -> None:
    async with database.transaction() as connection:
        statement = compiled(
            connection,
            "store_position",
            lambda: (
                update(change_positions)
                .where(change_positions.c.name == bindparam("name"))
                .values(seq=bindparam("seq"))
            ),
        )
        if await connection.run(statement, {"name": name, "seq": seq}):
            return
    try:
        async with database.transaction() as connection:
            statement = compiled(connection, "insert_position", lambda: insert(change_positions))
            await connection.run(statement, {"name": name, "seq": seq})
    except UniqueViolation:  # another relay on the same stream made it meanwhile
        await store_position(database, name, seq)


class Relay:
    def __init__(self, database: Database, config: RelayConfig) -> None:
        self.database = database
        self.config = config
        self.published = 0
        self._connection: Any = None
        self._jetstream: Any = None

    async def _broker(self) -> Any:
        """JetStream on a connection to the broker, and the stream, made if missing."""
        if self._jetstream is not None:
            return self._jetstream
        import nats
        from nats.js.api import StreamConfig
        from nats.js.errors import NotFoundError

        connection = await nats.connect(
            self.config.nats_url,
            connect_timeout=2,
            allow_reconnect=False,  # a broken connection is dropped and made anew
            max_reconnect_attempts=0,
        )
        jetstream = connection.jetstream(timeout=PUBLISH_TIMEOUT_SECONDS)
        stream = StreamConfig(
            name=self.config.stream,
            subjects=[f"{self.config.subject_prefix}.>"],
            duplicate_window=self.config.duplicate_window_seconds,
        )
        try:
            await jetstream.stream_info(self.config.stream)
        except NotFoundError:
            await jetstream.add_stream(stream)
        self._connection, self._jetstream = connection, jetstream
        return jetstream

    async def _drop_broker(self) -> None:
        connection, self._connection, self._jetstream = self._connection, None, None
        if connection is not None:
            try:
                await connection.close()
            except Exception:
                logger.debug("closing the NATS connection failed", exc_info=True)

    async def step(self, position: int | None) -> tuple[int, int]:
        """Publish one page after `position`; returns (new position, published)."""
        page = await changes.read_feed(database=self.database, after=position, limit=PAGE)
        if page.expired:
            logger.error(
                "the relay's position %s is past retention (CHANGES_RETENTION_DAYS): "
                "changes were lost; going on from the oldest kept",
                position,
            )
            page = await changes.read_feed(database=self.database, after=None, limit=PAGE)
        if not page.items:
            return page.position, 0
        jetstream = await self._broker()
        for item in page.items:
            await jetstream.publish(
                f"{self.config.subject_prefix}.{item['action']}",
                orjson.dumps(item),
                headers={"Nats-Msg-Id": message_id(item["seq"])},
            )
        await store_position(self.database, self.config.position_name, page.position)
        return page.position, len(page.items)

    async def run(self, stop: asyncio.Event) -> None:
        position = await read_position(self.database, self.config.position_name)
        pause = IDLE_POLL_SECONDS
        logger.info(
            "relay: %s -> %s (stream %s), from position %s",
            self.config.subject_prefix,
            self.config.nats_url,
            self.config.stream,
            position,
        )
        while not stop.is_set():
            try:
                position, published = await self.step(position)
                self.published += published
                pause = IDLE_POLL_SECONDS
                if published:
                    continue
            except Exception as error:
                logger.warning("relay: %s; retrying in %.1f s", describe(error), pause)
                await self._drop_broker()  # then retry from the position stored
                pause = min(pause * 2, RETRY_MAX_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        await self._drop_broker()


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


async def relay(settings: Settings) -> None:
    """Run the relay until SIGTERM or SIGINT."""
    database = create_database(create_db_engine(settings), settings)
    await database.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await Relay(database, RelayConfig.from_settings(settings)).run(stop)
    finally:
        await database.close()
