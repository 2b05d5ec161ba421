"""What routes depend on, as type aliases: `DatabaseDep`, `UserIdDep`, ...

Dependencies that do no I/O are `async def`: FastAPI runs a plain `def`
dependency in the thread pool, a thread hop per dependency per request.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Header, Path, Request, Response
from starlette.convertors import StringConvertor, register_url_convertor

from users_service import idempotency
from users_service.database import Connection, Database
from users_service.pagination import CursorCodec
from users_service.preconditions import (
    VersionCondition,
    if_match_condition,
    if_none_match_condition,
)

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


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


class IdempotentAnswer:
    """Where a POST stores its answer for retries with the same Idempotency-Key."""

    def __init__(self, claim: idempotency.Claim | None) -> None:
        self.claim = claim

    async def save(self, response: Response, *, connection: Connection) -> None:
        """Store `response` in the connection's open write transaction (no key: nothing)."""
        if self.claim is not None:
            await idempotency.save_answer(
                connection=connection, claimed=self.claim, response=response
            )


async def get_idempotent_answer(
    request: Request,
    idempotency_key: Annotated[
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
    ] = None,
) -> IdempotentAnswer:
    return IdempotentAnswer(getattr(request.state, "idempotency_claim", None))


async def get_cursor_codec(request: Request) -> CursorCodec:
    codec: CursorCodec = request.app.state.cursor_codec
    return codec


async def user_id_from_path(
    user_id: Annotated[
        str,
        Path(
            pattern=UUID_PATTERN,
            description="The user's id: a UUID in canonical 8-4-4-4-12 form.",
            examples=["5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10"],
        ),
    ],
) -> uuid.UUID:
    return uuid.UUID(user_id)


async def if_match(
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            description='Write only if the user\'s ETag matches: `"<version>"` or `*`.',
        ),
    ] = None,
) -> VersionCondition | None:
    return if_match_condition(if_match)


async def if_none_match(
    if_none_match: Annotated[
        str | None,
        Header(alias="If-None-Match", description="Answer 304 if the user's ETag matches."),
    ] = None,
) -> VersionCondition | None:
    return if_none_match_condition(if_none_match)


DatabaseDep = Annotated[Database, Depends(get_database)]
CursorCodecDep = Annotated[CursorCodec, Depends(get_cursor_codec)]
UserIdDep = Annotated[uuid.UUID, Depends(user_id_from_path)]
IfMatchDep = Annotated[VersionCondition | None, Depends(if_match)]
IfNoneMatchDep = Annotated[VersionCondition | None, Depends(if_none_match)]
IdempotentAnswerDep = Annotated[IdempotentAnswer, Depends(get_idempotent_answer)]
