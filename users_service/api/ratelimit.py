"""Per-caller rate limits: RATE_LIMITS, in this process or shared through Redis.

`caller:requests_per_second[:burst]` (and `*:...` for each caller not
listed, each with its own budget; a caller with neither is not limited)
means: up to `burst` requests at once, then one every 1/requests_per_second
seconds on average. A request over it is answered 429 `rate_limited` with
an integer `Retry-After` (1 at least) and is not counted.

Where the count is kept, and how the two differ:

- RATE_LIMIT_STORAGE_URL empty: in this process's memory, per process
  (with WORKERS=N or several replicas each process allows the whole
  limit), by LocalRates below: GCRA, the generic cell rate algorithm, one
  "theoretical arrival time" per caller. Emission interval T =
  1/requests_per_second, tolerance (burst - 1) * T: a request at `now`
  passes when tat - now <= tolerance, and then tat = max(tat, now) + T.
  After a full burst the next request passes T later (Retry-After:
  ceil(T), 1 at least), and idle time gives the burst back at the rate,
  whole after burst/requests_per_second seconds. In any t seconds a caller
  gets at most burst + t * requests_per_second; over a long run exactly
  requests_per_second.
- A Redis URL: in that Redis, by the `limits` library's moving window
  (asyncio storage on redis-py), shared by every process and replica that
  names it with the same RATE_LIMIT_KEY_PREFIX: `burst` requests in any
  window of burst/requests_per_second seconds rounded up to whole seconds
  (the library's granularity; RateLimit.window_seconds). What a caller
  notices: after a full burst it waits until the oldest request leaves
  the window (Retry-After up to the window) and then gets the whole burst
  back at once, where in memory it gets one request every T; and when
  burst/requests_per_second is not a whole number of seconds the Redis
  rate is burst/window, below requests_per_second. Both refuse a burst
  beyond `burst`, neither doubles it at a window's edge.
  A Redis that does not answer within STORAGE_TIMEOUT_SECONDS never takes
  the service down: the request is let through and counted in
  `rate_limit_fallbacks_total`, and the next STORAGE_RETRY_SECONDS let
  every request through the same way without asking Redis (one timeout
  per outage and second, not one per request).

The check runs in api/middleware.py's PerCallerMiddleware, with the cap
on requests in flight: one layer, not one more. With RATE_LIMITS empty
there is no CallerLimits and the request path only sees that it is None.
Why the in-process count is ours and not the library's: LocalRates.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio import strategies as aio_strategies
from limits.aio.storage import RedisStorage
from limits.errors import StorageError
from starlette.responses import JSONResponse

from users_service.api.problems import problem_response
from users_service.errors import RateLimited
from users_service.metrics import RATE_LIMIT_FALLBACKS
from users_service.settings import ANY_CALLER, RateLimit

logger = logging.getLogger("users_service.ratelimit")

# A Redis on the same network answers in a millisecond or so; past this it
# is taken for gone (a connection refused fails at once anyway).
STORAGE_TIMEOUT_SECONDS = 0.5
# After a failure, how long requests are let through without asking Redis.
STORAGE_RETRY_SECONDS = 1.0


class _Cell:
    """One caller's GCRA state: its theoretical arrival time, and its limit."""

    __slots__ = ("interval", "tat", "tolerance")

    def __init__(self, limit: RateLimit) -> None:
        self.interval = 1.0 / limit.per_second  # T
        # (burst - 1) * T, and a nanosecond for float rounding: a request
        # that arrives exactly on time conforms.
        self.tolerance = (limit.burst - 1) * self.interval + 1e-9
        self.tat = 0.0  # at or before any clock reading: a full burst to start


class LocalRates:
    """The in-process count: GCRA, one float per caller (module docstring).

    Ours, not the `limits` library's in-memory storage, because that costs
    more than the 5% of a GET the issue allows it. Measured on this
    machine (2 shared cores; docs/performance.md, "Rate limits"), one
    check every 55 µs as requests come, limit 100,000/s: a check here
    0.16-0.18 µs median (a lookup, a clock reading, a comparison), p99
    under 0.5 µs; limits' MemoryStorage.acquire_entry, the moving window,
    2.05-2.09 µs median (an insert at the front of the caller's list, 1.3
    µs at 18,000 entries and growing with the rate; an IndexError raised
    and caught per request under the limit, 0.4 µs; its expiry thread's
    is_alive(), 0.4 µs; a lock), p99 17-18 µs, and its expiry thread,
    started again every 10 ms, stops the event loop at each start: 220-248
    checks in 40,000 took over 50 µs (median 178-265 µs, the worst 3-5
    ms). Of a SQLite GET /users/{id} in process (50-53 µs) that library
    cost +3.5 to +5.0 µs (7-10%), this +0.05 to +1.0 µs (0.1-2%).
    Its fixed window (+2.3 to +4.1 µs, and twice the burst across a
    window's edge), sliding window counter (+7.5 µs) and asyncio storage
    were no better.

    Memory stays bounded: a cell per caller, and callers are the configured
    names, `anonymous` and `unauthenticated` (api/middleware.py)."""

    def __init__(
        self,
        table: Mapping[str, RateLimit],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = dict(table)
        self._default = self._table.pop(ANY_CALLER, None)
        self._clock = clock
        # caller -> its cell, or None: unlimited.
        self._cells: dict[str, _Cell | None] = {}

    def retry_after(self, caller: str) -> int | None:
        """None if one more request of `caller` may go on (it is counted);
        else the whole seconds until it would (1 at least), not counted."""
        try:
            cell = self._cells[caller]
        except KeyError:
            limit = self._table.get(caller, self._default)
            cell = self._cells[caller] = None if limit is None else _Cell(limit)
        if cell is None:
            return None
        now = self._clock()
        tat = cell.tat
        if tat < now:
            tat = now
        if tat - now <= cell.tolerance:
            cell.tat = tat + cell.interval
            return None
        return max(1, math.ceil(tat - cell.tolerance - now))


class CallerLimits:
    """Whether one more request of a caller fits its limit."""

    def __init__(self, table: Mapping[str, RateLimit], storage_url: str, key_prefix: str) -> None:
        items: dict[str, RateLimitItem] = {
            caller: RateLimitItemPerSecond(limit.burst, limit.window_seconds)
            for caller, limit in table.items()
        }
        self._default = items.pop(ANY_CALLER, None)
        self._items = items
        self.shared = bool(storage_url)
        self._pool = None
        # The in-process count, used when no Redis keeps it: nothing in it
        # waits, so no coroutine (the bound method: one lookup less per check).
        self.local_retry_after = LocalRates(table).retry_after
        if storage_url:
            from redis.asyncio import ConnectionPool  # only when asked for

            # Our own pool: its timeouts, no retries, and closed with the app.
            self._pool = ConnectionPool.from_url(
                storage_url,
                socket_connect_timeout=STORAGE_TIMEOUT_SECONDS,
                socket_timeout=STORAGE_TIMEOUT_SECONDS,
            )
            storage = RedisStorage(
                "async+" + storage_url,
                wrap_exceptions=True,
                implementation="redispy",
                key_prefix=key_prefix,
                connection_pool=self._pool,  # type: ignore[arg-type]
            )
            self._shared = aio_strategies.MovingWindowRateLimiter(storage)
        self._skip_until = 0.0

    def limit_of(self, caller: str) -> RateLimitItem | None:
        return self._items.get(caller, self._default)

    async def shared_retry_after(self, caller: str) -> int | None:
        """The same, counted in Redis; let through when Redis does not answer."""
        item = self.limit_of(caller)
        if item is None:
            return None
        if time.monotonic() < self._skip_until:
            RATE_LIMIT_FALLBACKS.inc()
            return None
        try:
            if await self._shared.hit(item, caller):
                return None
            reset = (await self._shared.get_window_stats(item, caller)).reset_time
        except (TimeoutError, StorageError, OSError) as error:
            if time.monotonic() >= self._skip_until:
                logger.warning(
                    "rate limits: the storage did not answer (%s); requests are let "
                    "through unchecked until it does",
                    type(getattr(error, "storage_error", error)).__name__,
                )
            self._skip_until = time.monotonic() + STORAGE_RETRY_SECONDS
            RATE_LIMIT_FALLBACKS.inc()
            return None
        return _seconds_until(reset)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()


def _seconds_until(reset: float) -> int:
    return max(1, math.ceil(reset - time.time()))


def rate_limited(retry_after: int) -> JSONResponse:
    """The 429 for a caller over its limit (api/middleware.py checks)."""
    refusal = RateLimited(
        f"This caller's rate limit is spent; retry in {retry_after} s (Retry-After)"
    )
    return problem_response(refusal, headers={"Retry-After": str(retry_after)})
