"""Per-caller rate limits: RATE_LIMITS, counted by the `limits` library.

Each caller listed in RATE_LIMITS (`caller:requests_per_second[:burst]`),
and each caller not listed when a default (`*:...`) is given, may send
`burst` requests to /users in any window of `burst / requests_per_second`
seconds (rounded up to whole seconds, the library's granularity): a moving
window, so no burst at a window's edge doubles it. The next one is answered
429 `rate_limited` with an integer `Retry-After`: the seconds until the
oldest request of the window leaves it.

Where the count is kept:

- RATE_LIMIT_STORAGE_URL empty: in this process's memory (limits'
  synchronous MemoryStorage: nothing in it waits, and it costs less than
  half of the asynchronous one's per check, docs/performance.md). With WORKERS=N
  or several replicas each process allows the whole limit.
- A Redis URL: in that Redis (limits' asyncio storage on redis-py), shared
  by every process and replica that names it with the same
  RATE_LIMIT_KEY_PREFIX. A Redis that does not answer within
  STORAGE_TIMEOUT_SECONDS never takes the service down: the request is let
  through and counted in `rate_limit_fallbacks_total`, and the next
  STORAGE_RETRY_SECONDS let every request through the same way without
  asking Redis (one timeout per outage and second, not one per request).

The check runs in api/middleware.py's PerCallerMiddleware, with the cap
on requests in flight: one layer, not one more. With RATE_LIMITS empty
there is no CallerLimits and the request path only sees that it is None.

What a check costs (docs/performance.md, "Rate limits"): in memory, 3-5 µs
of a 53 µs SQLite GET in process (6-9%), nearly all of it in the library's
MemoryStorage.acquire_entry: its insert at the front of the caller's list
grows with the requests in the window, and its expiry thread, started again
every 10 ms, stops the loop for a thread start each time. The library's
other in-memory strategies cost as much or more (fixed window 2-4 µs, and
a burst doubles at a window's edge; sliding window counter about 7.5 µs),
so the moving window stays.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio import strategies as aio_strategies
from limits.aio.storage import RedisStorage
from limits.errors import StorageError
from limits.storage import MemoryStorage
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
        self._local = None if storage_url else MemoryStorage()
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
        # caller -> (storage key, amount, window seconds), or None: unlimited.
        self._entries: dict[str, tuple[str, int, int] | None] = {}

    def limit_of(self, caller: str) -> RateLimitItem | None:
        return self._items.get(caller, self._default)

    def _entry_of(self, caller: str) -> tuple[str, int, int] | None:
        item = self.limit_of(caller)
        return None if item is None else (item.key_for(caller), item.amount, item.get_expiry())

    def local_retry_after(self, caller: str) -> int | None:
        """In this process's memory: None if the request may go on; else
        the seconds to wait (1 at least), the request not counted."""
        try:
            entry = self._entries[caller]
        except KeyError:
            # Bounded: callers are the configured names, anonymous and unauthenticated.
            entry = self._entries[caller] = self._entry_of(caller)
        if entry is None:
            return None
        key, amount, window = entry
        local = self._local
        assert local is not None, "a shared storage is checked with shared_retry_after"
        if local.acquire_entry(key, amount, window):
            return None
        oldest, _ = local.get_moving_window(key, amount, window)
        return _seconds_until(oldest + window)

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
