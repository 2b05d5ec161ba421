"""JSON in and out: orjson for speed, strict rules for request bodies."""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

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


# A `\uD800`-`\uDFFF` escape. orjson refuses a lone one as malformed JSON,
# but it is valid JSON syntax (RFC 8259 allows any \uXXXX escape): only the
# string's content is wrong, which validation says of the field itself.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body that must be one JSON object.

    orjson refuses invalid UTF-8, NaN and documents nested more than 1024
    levels deep, so none of them reach validation. A body it refuses that
    escapes a surrogate is read again by the standard library, which keeps a
    lone one in the string; every other rule stays (see `_loads_keeping_surrogates`),
    and the fields' validators refuse the surrogate by name.
    """
    if not body:
        raise BodyError("the request body is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if not _SURROGATE_ESCAPE.search(body):
            raise BodyError(f"the request body is not valid JSON: {error.msg}") from None
        value = _loads_keeping_surrogates(body, error.msg)
    if not isinstance(value, dict):
        raise BodyError("the request body must be a JSON object")
    return value


def _loads_keeping_surrogates(body: bytes, orjson_message: str) -> Any:
    """`body` as the standard library reads it, with orjson's other rules:
    strict UTF-8, no NaN or Infinity, no number out of range, bounded depth.
    A key with a lone surrogate is kept as its escape (`\\ud800`): it is
    refused as an unknown field, by that name, and an answer can carry it."""

    def refuse(_: str) -> NoReturn:
        raise ValueError("not JSON")

    def finite(text: str) -> float:
        number = float(text)
        if not math.isfinite(number):
            raise ValueError("number out of range")
        return number

    def escaped_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        return {key.encode("utf-8", "backslashreplace").decode(): value for key, value in pairs}

    try:
        return json.loads(
            body.decode("utf-8"),
            parse_constant=refuse,
            parse_float=finite,
            object_pairs_hook=escaped_keys,
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise BodyError(f"the request body is not valid JSON: {orjson_message}") from None
