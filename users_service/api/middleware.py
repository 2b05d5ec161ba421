"""The service's ASGI middleware, pure ASGI throughout.

Not BaseHTTPMiddleware: it costs a task per request and turns errors raised
while a body streams into bare 500s.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from users_service.api.auth import ANONYMOUS, is_protected
from users_service.api.problems import problem_response
from users_service.api.ratelimit import CallerLimits, rate_limited
from users_service.errors import InternalError, PayloadTooLarge, RateLimited, ServiceUnavailable
from users_service.logs import AccessLog
from users_service.metrics import REQUESTS_IN_FLIGHT, UNMATCHED_ROUTE, RequestMetrics
from users_service.request_context import (
    REQUEST_ID_HEADER,
    request_id_from,
    reset_request_id,
    set_request_id,
)

logger = logging.getLogger("users_service.requests")


def abandoned_at_shutdown() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The service shut down before this request finished; whether it took effect "
        "is unknown: retry it (with the same Idempotency-Key)"
    )


def address(client: tuple[str, int] | None) -> str:
    """`host:port` (`[host]:port` for IPv6) of a scope's client; `-` if none."""
    if client is None:
        return "-"
    host, port = client
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def forwarded_chain(scope: Scope) -> str:
    """X-Forwarded-For as received (several such headers joined, as uvicorn does)."""
    return ", ".join(
        value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"
    )


class RequestContextMiddleware:
    """What every request gets, outermost: a request id (echoed in
    `X-Request-ID`), a 500 problem for any error nothing else handled (its
    traceback logged with the request id), and, once answered, its metrics
    and its one access-log line (see logs.py).

    It runs outside ProxyHeadersMiddleware, so the `client` it sees is the
    peer; when the client is another once the request has been through that
    middleware, the peer is a trusted proxy (FORWARDED_ALLOW_IPS) and the
    line records the X-Forwarded-For it sent."""

    def __init__(self, app: ASGIApp, access_log: AccessLog) -> None:
        self.app = app
        self.metrics = RequestMetrics()
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        peer = scope.get("client")
        request_id = request_id_from(scope)
        token = set_request_id(request_id)
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500
        REQUESTS_IN_FLIGHT.count += 1

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except asyncio.CancelledError:
            # Only the server cancels a request: uvicorn, when it is still
            # running at the end of SHUTDOWN_GRACE_SECONDS. Say so (rather
            # than let uvicorn answer a bare 500); the process exits next.
            logger.error("request abandoned at shutdown [request_id=%s]", request_id)
            if status == 500:
                await problem_response(abandoned_at_shutdown())(
                    scope, receive, send_with_request_id
                )
        except Exception:
            logger.exception("unhandled error [request_id=%s]", request_id)
            if status != 500:  # the answer had started: nothing more can be sent
                raise
            await problem_response(InternalError())(scope, receive, send_with_request_id)
        finally:
            REQUESTS_IN_FLIGHT.count -= 1
            reset_request_id(token)
            self._observe(scope, request_id, status, time.perf_counter() - started, peer)

    def _observe(
        self,
        scope: Scope,
        request_id: str,
        status: int,
        seconds: float,
        peer: tuple[str, int] | None,
    ) -> None:
        route = scope.get("route")
        template = getattr(route, "path_format", None) or UNMATCHED_ROUTE
        method = scope["method"]
        # Set by ApiKeyMiddleware: a configured name, `anonymous` or
        # `unauthenticated`, never what the request sent.
        caller = scope.get("state", {}).get("caller") or ANONYMOUS
        self.metrics.record(method, template, status, seconds, caller)
        if self.access_log.enabled:
            self.access_log.write(
                request_id=request_id,
                caller=caller,
                method=method,
                route=template,
                status=status,
                duration_ms=round(seconds * 1000, 3),
                peer=address(peer),
                forwarded_for=None if scope.get("client") is peer else forwarded_chain(scope),
                user_id=scope.get("path_params", {}).get("user_id"),
            )


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413, declared or streamed.

    A declared Content-Length over the limit is answered before any of the
    body is read (the server enforces the declared length itself). A body
    of undeclared length (chunked) is read here, up to the limit, before
    the route runs — so even a route that never reads bodies refuses it —
    and never held past the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._too_large = PayloadTooLarge(f"The request body is larger than {max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = chunked = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = value
        if declared is None and chunked is None:  # no body at all
            await self.app(scope, receive, send)
            return
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await problem_response(self._too_large)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replaying([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                await problem_response(self._too_large)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replaying([body], receive), send)


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A receive that hands out `messages` first, then the real ones."""

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


class PerCallerMiddleware:
    """What one caller may send, on the routes API keys guard (429
    `rate_limited` beyond either): first its rate (RATE_LIMITS, when set:
    api/ratelimit.py), then at most `limit` requests in flight at once in
    this process, so that one caller cannot take every connection, thread
    and turn for itself. Runs inside ApiKeyMiddleware, which names the
    caller, so a refused key is never counted against anyone.

    One layer for both: a layer of its own cost the rate limit about a
    microsecond more per request (docs/performance.md, "Rate limits")."""

    def __init__(self, app: ASGIApp, limit: int, rate_limits: CallerLimits | None) -> None:
        self.app = app
        self.limit = limit
        self.rate_limits = rate_limits
        self.in_flight: dict[str, int] = {}
        self._refusal = RateLimited()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        caller = scope["state"]["caller"]
        rate_limits = self.rate_limits
        if rate_limits is not None:
            if rate_limits.shared:
                retry_after = await rate_limits.shared_retry_after(caller)
            else:  # nothing to wait for: no coroutine
                retry_after = rate_limits.local_retry_after(caller)
            if retry_after is not None:
                await rate_limited(retry_after)(scope, receive, send)
                return
        if not self.limit:
            await self.app(scope, receive, send)
            return
        in_flight = self.in_flight.get(caller, 0)
        if in_flight >= self.limit:
            await problem_response(self._refusal)(scope, receive, send)
            return
        self.in_flight[caller] = in_flight + 1
        try:
            await self.app(scope, receive, send)
        finally:
            remaining = self.in_flight[caller] - 1
            if remaining:
                self.in_flight[caller] = remaining
            else:
                del self.in_flight[caller]
