"""http_requests_in_flight: the requests being answered now, up while they run and down after."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from starlette.types import Receive, Scope, Send

from users_service.api.middleware import RequestContextMiddleware
from users_service.logs import AccessLog
from users_service.metrics import sample_in_flight
from users_service.settings import LogFormat


def in_flight() -> float:
    sample_in_flight()  # as /metrics does before it answers
    return REGISTRY.get_sample_value("http_requests_in_flight") or 0.0


def test_requests_in_flight_are_counted_while_they_run_and_after_they_fail() -> None:
    seen: list[float] = []

    async def scenario() -> None:
        entered = asyncio.Semaphore(0)
        release = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            entered.release()
            await release.wait()
            if scope["path"] == "/fails":
                raise RuntimeError("a bug")  # answered 500 by the middleware
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        middleware = RequestContextMiddleware(app, AccessLog(LogFormat.text, enabled=False))

        async def request(path: str) -> None:
            scope = {"type": "http", "method": "GET", "path": path, "headers": []}

            async def receive() -> dict[str, object]:
                return {"type": "http.request", "body": b""}

            async def send(message: object) -> None:
                pass

            await middleware(scope, receive, send)

        before = in_flight()
        requests = [asyncio.create_task(request(path)) for path in ("/ok", "/fails")]
        for _ in requests:
            await entered.acquire()
        seen.append(in_flight() - before)
        release.set()
        await asyncio.gather(*requests)
        seen.append(in_flight() - before)

    asyncio.run(scenario())
    assert seen == [2, 0]
