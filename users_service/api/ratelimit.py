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
from limits import strategies as sync_strategies
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
        self.limits: dict[str, RateLimitItem] = {
            caller: RateLimitItemPerSecond(limit.burst, limit.window_seconds)
            for caller, limit in table.items()
        }
        self.default = self.limits.pop(ANY_CALLER, None)
        self.shared = bool(storage_url)
        self._pool = None
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
        else:
            self._local = sync_strategies.MovingWindowRateLimiter(MemoryStorage())
        self._skip_until = 0.0

    def limit_of(self, caller: str) -> RateLimitItem | None:
        return self.limits.get(caller, self.default)

    async def retry_after(self, caller: str) -> int | None:
        """None if the request may go on; else the seconds to wait (1 at least),
        the request not counted."""
        item = self.limit_of(caller)
        if item is None:
            return None
        if not self.shared:
            if self._local.hit(item, caller):
                return None
            reset = self._local.get_window_stats(item, caller).reset_time
            return _seconds_until(reset)
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
        retry_after = await self.limits.retry_after(caller)
        if retry_after is None:
            await self.app(scope, receive, send)
            return
        refusal = RateLimited(
            f"This caller's rate limit is spent; retry in {retry_after} s (Retry-After)"
        )
        await problem_response(refusal, headers={"Retry-After": str(retry_after)})(
            scope, receive, send
        )
