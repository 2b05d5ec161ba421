"""What routes depend on, as type aliases: `DatabaseDep`, `UserIdDep`, ...

Dependencies that do no I/O are `async def`: FastAPI runs a plain `def`
dependency in the thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path, Request, Response
from starlette.convertors import StringConvertor, register_url_convertor

from users_service import idempotency
from users_service.database import Connection, Database
from users_service.pagination import CursorCodec

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class UserIdSegment(StringConvertor):
    """The `{user_id}` of /users/{user_id}: any segment but `batch`.

    /users/batch is a resource of its own, so `PUT /users/batch` is 405 (it
    takes only POST) rather than 422 about a malformed id. Any other segment
    reaches the route, whose validation answers 422 when it is not a UUID.
    """

    regex = "(?!batch$)[^/]+"


register_url_convertor("user_id", UserIdSegment())
# The path of one user's routes, with the convertor above.
USER_PATH = "/{user_id:user_id}"


def database_of(request: Request) -> Database:
    """The app's database. Routes take the request and call this rather than
    depend on a `Database` dependency: a dependency costs FastAPI a resolution
    of its own on every request (see README, "Throughput")."""
    database: Database = request.app.state.database
    return database


async def save_idempotent_answer(
    request: Request, response: Response, *, connection: Connection
) -> None:
    """Store `response` for the request's Idempotency-Key, if it has one, in
    the connection's open write transaction (see api/routing.py)."""
    claim = getattr(request.state, "idempotency_claim", None)
    if claim is not None:
        await idempotency.save_answer(connection=connection, claimed=claim, response=response)


def cursor_codec_of(request: Request) -> CursorCodec:
    codec: CursorCodec = request.app.state.cursor_codec
    return codec


# Parameters read straight from the request. Routes take them as plain
# parameters rather than dependencies: each dependency costs FastAPI a
# resolution of its own on every request (see README, "Throughput").
UserIdPath = Annotated[
    str,
    Path(
        pattern=UUID_PATTERN,
        description="The user's id: a UUID in canonical 8-4-4-4-12 form.",
        examples=["5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10"],
    ),
]
IfMatchHeader = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Write only if the user\'s ETag matches: `"<version>"` or `*`.',
    ),
]
IfNoneMatchHeader = Annotated[
    str | None,
    Header(alias="If-None-Match", description="Answer 304 if the user's ETag matches."),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        pattern=idempotency.KEY_PATTERN.pattern,
        description=(
            "1-255 visible ASCII characters. A retry with the same key and body "
            "within 24 hours gets the first answer again (Idempotency-Replayed: "
            "true) and creates nothing."
        ),
    ),
]
