"""The service's ASGI middleware, pure ASGI throughout.

Not BaseHTTPMiddleware: it costs a task per request and turns errors raised
while a body streams into bare 500s.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from users_service.errors import internal_error, problem_response
from users_service.request_context import (
    REQUEST_ID_HEADER,
    request_id_from,
    reset_request_id,
    set_request_id,
)

logger = logging.getLogger("users_service.requests")


class RequestContextMiddleware:
    """Sets the request id, echoes it in `X-Request-ID`, and answers any
    error nothing else handled with a 500 problem after logging its
    traceback with the request id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        token = set_request_id(request_id)
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
            logger.exception("unhandled error [request_id=%s]", request_id)
            if response_started:
                raise
            await problem_response(internal_error())(scope, receive, send_with_request_id)
        finally:
            reset_request_id(token)
