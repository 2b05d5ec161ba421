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

With RATE_LIMITS empty the middleware is not installed at all.
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
from starlette.types import ASGIApp, Receive, Scope, Send

from users_service.api.auth import is_protected
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

    def _entry(self, caller: str) -> tuple[str, int, int] | None:
        try:
            return self._entries[caller]
        except KeyError:
            item = self.limit_of(caller)
            entry = None if item is None else (item.key_for(caller), item.amount, item.get_expiry())
            # Bounded: callers are the configured names, anonymous and unauthenticated.
            self._entries[caller] = entry
            return entry

    def local_retry_after(self, caller: str) -> int | None:
        """In this process's memory: None if the request may go on; else
        the seconds to wait (1 at least), the request not counted."""
        entry = self._entry(caller)
        if entry is None:
            return None
        key, amount, window = entry
        assert self._local is not None, "a shared storage is checked with shared_retry_after"
        if self._local.acquire_entry(key, amount, window):
            return None
        oldest, _ = self._local.get_moving_window(key, amount, window)
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


class RateLimitMiddleware:
    """429 `rate_limited` for a caller over its RATE_LIMITS entry, on the
    routes API keys guard. Runs inside ApiKeyMiddleware, which names the
    caller, so a refused key is never counted against anyone."""

    def __init__(self, app: ASGIApp, limits: CallerLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        caller = scope["state"]["caller"]
        if self.limits.shared:
            retry_after = await self.limits.shared_retry_after(caller)
        else:  # nothing to wait for: no coroutine
            retry_after = self.limits.local_retry_after(caller)
        if retry_after is None:
            await self.app(scope, receive, send)
            return
        refusal = RateLimited(
            f"This caller's rate limit is spent; retry in {retry_after} s (Retry-After)"
        )
        await problem_response(refusal, headers={"Retry-After": str(retry_after)})(
            scope, receive, send
        )
