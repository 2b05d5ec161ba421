"""The parameters routes declare, as `Annotated` aliases: one place each.

A route's signature says what it reads (`user_id: UserId`, `database:
DatabaseDep`, `if_match: IfMatch`); FastAPI documents it from there, and
TypedRoute (api/routing.py) reads it.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request
from pydantic import GetPydanticSchema
from pydantic_core import core_schema
from starlette.convertors import StringConvertor, register_url_convertor

from users_service import idempotency
from users_service.api.idempotent import Idempotency, idempotency_of
from users_service.changes import ChangeSource
from users_service.db.database import Database
from users_service.models import ChangeQuery, HistoryQuery, UserListQuery
from users_service.pagination import CursorCodec
from users_service.request_context import current_request_id
from users_service.settings import Settings

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class UserIdSegment(StringConvertor):
    """The `{user_id}` of /users/{user_id}: any segment but `batch` and `changes`.

    /users/batch and /users/changes are resources of their own, so `PUT
    /users/batch` is 405 (it takes only POST) rather than 422 about a
    malformed id. Any other segment reaches the route, whose validation
    answers 422 when it is not a UUID.
    """

    regex = "(?!(?:batch|changes)$)[^/]+"


register_url_convertor("user_id", UserIdSegment())
# The path of one user's routes, with the convertor above.
USER_PATH = "/{user_id:user_id}"


def _canonical_uuid(_source: Any, _handler: Any) -> core_schema.CoreSchema:
    """The canonical 8-4-4-4-12 form only (either case), then a UUID: pydantic's
    own pattern check, so a bad id is refused in its words."""
    return core_schema.chain_schema(
        [
            core_schema.str_schema(pattern=UUID_PATTERN),
            core_schema.no_info_plain_validator_function(uuid.UUID),
        ]
    )


UserId = Annotated[
    uuid.UUID,
    GetPydanticSchema(_canonical_uuid),
    Path(
        description="The user's id: a UUID in canonical 8-4-4-4-12 form.",
        examples=["5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10"],
    ),
]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='Write only if the user\'s ETag matches: `"<version>"` or `*`.',
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(alias="If-None-Match", description="Answer 304 if the user's ETag matches."),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        pattern=idempotency.KEY_PATTERN,
        description="1-255 visible ASCII characters. A retry with the same key and body within "
        "24 hours gets the first answer again (Idempotency-Replayed: true) and creates nothing.",
    ),
]
ListQuery = Annotated[UserListQuery, Query()]
ChangesQuery = Annotated[ChangeQuery, Query()]
HistoryListQuery = Annotated[HistoryQuery, Query()]


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_cursor_codec(request: Request) -> CursorCodec:
    codec: CursorCodec = request.app.state.cursor_codec
    return codec


def get_idempotency(request: Request, key: IdempotencyKey = None) -> Idempotency:
    """Declares the Idempotency-Key header: a route that depends on this runs
    in the Idempotency-Key flow (api/idempotent.py)."""
    return idempotency_of(request)


def get_change_source(request: Request) -> ChangeSource:
    """Who makes a write, as the change log records it."""
    return ChangeSource(request.state.caller, current_request_id())


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ChangeSourceDep = Annotated[ChangeSource, Depends(get_change_source)]
CursorCodecDep = Annotated[CursorCodec, Depends(get_cursor_codec)]
IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
