"""JSON in and out: orjson for speed, strict rules for request bodies."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response


class JSONResponse(StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_bytes_response(
    body: bytes, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """An answer whose JSON is already rendered (by the database)."""
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


class BodyError(ValueError):
    """A body that is not a JSON object; the message says why."""


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body that must be one JSON object.

    orjson refuses invalid UTF-8, lone surrogates, NaN and documents nested
    more than 1024 levels deep, so none of them reach validation.
    """
    if not body:
        raise BodyError("the request body is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BodyError(f"the request body is not valid JSON: {error.msg}") from None
    if not isinstance(value, dict):
        raise BodyError("the request body must be a JSON object")
    return value
