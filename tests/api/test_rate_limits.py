"""RATE_LIMITS: each caller's requests per second, in process or shared through Redis.

Limits here are slow (one request every 4 s after a burst of 3, say) so
that a slow, busy machine still sends the requests of a test before the
next one is due: what they guard is the count, not the clock. Counted in
memory unless the test names a Redis; the in-memory count's arithmetic,
on a clock of its own: tests/unit/test_local_rate_limits.py. Two real server processes
sharing one Redis: tests/system/test_rate_limits_shared.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from tests.api.test_bounded_reads import app_on, served
from tests.api.test_metrics import value
from tests.databases import create_fresh_database, migrate
from tests.helpers import READER, WRITER, WRITER_KEY, assert_problem
from tests.redis_servers import own_redis, shared_redis_url, unique_prefix
from tests.server import free_port
from users_service_client import AsyncUsersClient


def limited_app(tmp_path: Path, rate_limits: str, **settings: Any) -> FastAPI:
    url = create_fresh_database("sqlite", tmp_path, "_rate_limits")
    migrate(url)
    return app_on(url, rate_limits=rate_limits, **settings)


async def statuses(client: httpx.AsyncClient, count: int, headers: dict[str, str]) -> list[int]:
    return [(await client.get("/users", headers=headers)).status_code for _ in range(count)]


def test_a_caller_over_its_rate_gets_429_with_an_integer_retry_after(tmp_path: Path) -> None:
    # writer: 3 at once, then one every 4 s; reader: not listed and no default, so unlimited.
    app = limited_app(tmp_path, "writer:0.25:3")

    async def scenario() -> None:
        async with served(app) as client:
            before = (await client.get("/metrics")).text  # the process's: other tests' too
            assert await statuses(client, 3, WRITER) == [200, 200, 200]
            refused = await client.get("/users", headers=WRITER)
            assert_problem(refused, 429, "rate_limited")
            retry_after = refused.headers["retry-after"]
            # 4 s (one interval) less the time the three took, rounded up
            assert retry_after.isdigit() and 3 <= int(retry_after) <= 4, retry_after
            # A write is refused as well (before its body is read), and creates nothing.
            write = await client.post(
                "/users", json={"name": "Ada", "email": "ada@x.io", "age": 36}, headers=WRITER
            )
            assert_problem(write, 429, "rate_limited")
            assert await statuses(client, 5, READER) == [200] * 5
            assert (await client.get("/healthz")).status_code == 200  # open routes: no limit
            metrics = (await client.get("/metrics")).text
            refusals = {"method": "GET", "route": "<unmatched>", "status": "429"}
            for caller, refused_count in (("writer", 1), ("reader", 0)):
                counted = value(metrics, "http_requests_total", **refusals, caller=caller)
                earlier = value(before, "http_requests_total", **refusals, caller=caller)
                assert counted - earlier == refused_count

    asyncio.run(scenario())


def test_the_default_limit_holds_for_each_unlisted_caller_on_its_own(tmp_path: Path) -> None:
    app = limited_app(tmp_path, "reader:1000,*:0.25:2")

    async def scenario() -> None:
        async with served(app) as client:
            assert await statuses(client, 3, WRITER) == [200, 200, 429]
            assert await statuses(client, 3, READER) == [200, 200, 200]  # its own, higher

    asyncio.run(scenario())


def test_the_client_waits_out_the_retry_after_and_is_served(tmp_path: Path) -> None:
    app = limited_app(tmp_path, "writer:1")  # one request per second
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)  # really: the window must pass

    async def scenario() -> None:
        async with served(app):
            users = AsyncUsersClient(
                "http://test", api_key=WRITER_KEY, transport=httpx.ASGITransport(app), sleep=sleep
            )
            async with users:
                await users.list_users()
                page = await users.list_users()  # 429, Retry-After: 1, then served
        assert page.items == []

    asyncio.run(scenario())
    assert sleeps and sleeps[0] >= 1.0


def test_two_apps_sharing_a_redis_share_one_limit(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shared = {
        "rate_limit_storage_url": shared_redis_url(),
        "rate_limit_key_prefix": unique_prefix(),
    }
    first = limited_app(tmp_path / "a", "writer:0.25:3", **shared)
    second = limited_app(tmp_path / "b", "writer:0.25:3", **shared)

    async def scenario() -> None:
        async with served(first) as one, served(second) as two:
            assert await statuses(one, 2, WRITER) == [200, 200]
            assert await statuses(two, 2, WRITER) == [200, 429]
            assert await statuses(one, 1, WRITER) == [429]

    asyncio.run(scenario())


def test_a_redis_nobody_answers_lets_requests_through_and_counts_them(tmp_path: Path) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = limited_app(tmp_path, "writer:0.25:2", rate_limit_storage_url=nowhere)

    async def scenario() -> None:
        async with served(app) as client:
            before = value((await client.get("/metrics")).text, "rate_limit_fallbacks_total")
            assert await statuses(client, 4, WRITER) == [200] * 4  # over the limit, unchecked
            after = value((await client.get("/metrics")).text, "rate_limit_fallbacks_total")
            assert after - before == 4

    asyncio.run(scenario())


def test_a_redis_killed_mid_run_lets_requests_through_and_limits_again_once_back(
    tmp_path: Path,
) -> None:
    with own_redis(tmp_path) as redis:
        app = limited_app(tmp_path, "writer:0.25:2", rate_limit_storage_url=redis.url)

        async def scenario() -> None:
            async with served(app) as client:
                assert await statuses(client, 3, WRITER) == [200, 200, 429]  # Redis counts
                before = value((await client.get("/metrics")).text, "rate_limit_fallbacks_total")
                redis.stop()
                assert await statuses(client, 3, WRITER) == [200] * 3  # let through
                metrics = (await client.get("/metrics")).text
                assert value(metrics, "rate_limit_fallbacks_total") - before == 3
                redis.start()  # empty: the count starts again
                await asyncio.sleep(1.2)  # past STORAGE_RETRY_SECONDS, Redis is asked again
                assert await statuses(client, 3, WRITER) == [200, 200, 429]

        asyncio.run(scenario())
