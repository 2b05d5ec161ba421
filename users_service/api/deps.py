"""What the /users routes read from the request: the database, the user id,
the precondition and idempotency headers, and their OpenAPI declarations.

Plain functions of the request rather than FastAPI dependencies: FastAPI
resolves each dependency, and validates each declared parameter kind, on
every request, which the profile showed as 40% of a GET (README,
"Throughput"). The functions answer bad input exactly as FastAPI would.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
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


# The parameters of the /users routes, read from the request by the
# functions below and declared to OpenAPI as these dicts. Declaring them as
# FastAPI parameters would cost a validation pass per parameter kind on
# every request, a sixth of a GET (see README, "Throughput").
USER_ID_DESCRIPTION = "The user's id: a UUID in canonical 8-4-4-4-12 form."
USER_ID: dict[str, Any] = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "schema": {
        "type": "string",
        "pattern": UUID_PATTERN,
        "description": USER_ID_DESCRIPTION,
        "examples": ["5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10"],
        "title": "User Id",
    },
    "description": USER_ID_DESCRIPTION,
}


def _optional_header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {
            "anyOf": [{"type": "string", **schema}, {"type": "null"}],
            "description": description,
            "title": name,
        },
        "description": description,
    }


IF_MATCH = _optional_header(
    "If-Match", 'Write only if the user\'s ETag matches: `"<version>"` or `*`.'
)
IF_NONE_MATCH = _optional_header("If-None-Match", "Answer 304 if the user's ETag matches.")
IDEMPOTENCY_KEY = _optional_header(
    idempotency.HEADER,
    "1-255 visible ASCII characters. A retry with the same key and body within 24 hours "
    "gets the first answer again (Idempotency-Replayed: true) and creates nothing.",
    pattern=idempotency.KEY_PATTERN.pattern,
)
_CANONICAL_UUID = re.compile(UUID_PATTERN)


def user_id_of(request: Request) -> uuid.UUID:
    """The path's user id; 422 (as FastAPI words it) unless a canonical UUID."""
    value: str = request.path_params["user_id"]
    if not _CANONICAL_UUID.fullmatch(value):
        raise RequestValidationError(
            [
                {
                    "type": "string_pattern_mismatch",
                    "loc": ("path", "user_id"),
                    "msg": f"String should match pattern '{UUID_PATTERN}'",
                    "input": value,
                }
            ]
        )
    return uuid.UUID(value)


def header_of(request: Request, parameter: dict[str, Any]) -> str | None:
    """An optional header's value (one of the header parameters above)."""
    value: str | None = request.headers.get(parameter["name"])
    return value
