"""A route class that reads JSON request bodies by the contract's rules.

FastAPI on its own treats a body of another content type as bytes (a 422
about the body's type, not a 415) and answers 400 for bodies it cannot
decode. This class checks the content type first (415), then parses the
body as one JSON object (422 otherwise), and hands the parsed object to
FastAPI's validation.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from users_service.errors import unsupported_media_type, validation_failed
from users_service.jsonio import BodyError, parse_json_object

JSON = "application/json"
MERGE_PATCH_JSON = "application/merge-patch+json"


def accepted_media_types(methods: set[str]) -> tuple[str, ...]:
    return (JSON, MERGE_PATCH_JSON) if "PATCH" in methods else (JSON,)


def media_type_of(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class JSONBodyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        accepted = accepted_media_types(self.methods or set())

        async def read_json_body_then_handle(request: Request) -> Response:
            if media_type_of(request) not in accepted:
                raise unsupported_media_type(accepted)
            try:
                body = parse_json_object(await request.body())
            except BodyError as error:
                raise validation_failed(
                    [{"loc": ["body"], "msg": str(error), "type": "json_invalid"}]
                ) from None
            # Starlette's Request caches the parsed body here; FastAPI's
            # handler reads it through `await request.json()`.
            request._json = body
            return await handler(request)

        return read_json_body_then_handle
