"""Prometheus metrics, served at GET /metrics.

- `http_requests_total{method, route, status, caller}` and
  `http_request_duration_seconds{method, route, caller}`: every request, by
  route template (`/users/{user_id}`) and caller, counted by the request
  middleware. `caller` is a name from API_KEYS / API_READ_KEYS, `anonymous`
  when keys are off (and on the open routes), `unauthenticated` for a
  missing or refused key: never anything a request made up, so the label
  set stays bounded.
- `http_requests_in_flight`: requests being answered now (each worker's
  count sampled every half second and when it answers /metrics).
- `build_info{version, python, database}`: always 1.
- `users_created_total`, `users_updated_total`, `users_deleted_total`.
- `db_pool_connections{state="in_use"|"idle"}`: sampled every second.
- `db_pool_wait_seconds` (its `_count`: how many requests had to wait) and
  `db_pool_timeouts_total`: waits for a connection or a turn (db/database.py).
- `rate_limit_fallbacks_total`: requests let through unchecked because the
  rate limits' Redis did not answer (api/ratelimit.py).
- `http_connections_refused_total{reason}`: 431s and 408s written by the
  connection itself (api/connections.py), which no request line counts.

Several workers (uvicorn --workers N): set PROMETHEUS_MULTIPROC_DIR to an
empty directory that only this service uses (wiped before each start); each
worker then keeps its figures in a file there and /metrics, whichever
worker answers it, adds them up (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
import platform

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

UNMATCHED_ROUTE = "<unmatched>"

REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered.", ["method", "route", "status", "caller"]
)
DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival to its answer.",
    ["method", "route", "caller"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
USERS_CREATED = Counter("users_created_total", "Users created (POST /users and /users/batch).")
USERS_UPDATED = Counter("users_updated_total", "Successful PUT and PATCH of a user.")
USERS_DELETED = Counter("users_deleted_total", "Users deleted.")
CONNECTIONS_REFUSED = Counter(
    "http_connections_refused_total",
    "Connections answered and closed before a request reached the app, by reason: "
    "headers_too_large (431) or headers_timeout (408).",
    ["reason"],
)
POOL = Gauge(
    "db_pool_connections",
    "Database connections of the pool, by state.",
    ["state"],
    multiprocess_mode="livesum",
)

IN_FLIGHT = Gauge(
    "http_requests_in_flight",
    "Requests being answered now.",
    multiprocess_mode="livesum",
)
BUILD_INFO = Gauge(
    "build_info",
    "Always 1: the service's version, the Python running it, the database kind.",
    ["version", "python", "database"],
    multiprocess_mode="max",
)
POOL_WAIT = Histogram(
    "db_pool_wait_seconds",
    "Time a request waited for a database connection or turn, when none was free at once.",
    buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
POOL_TIMEOUTS = Counter(
    "db_pool_timeouts_total",
    "Requests answered 503 because no database connection or turn came free in time.",
)
RATE_LIMIT_FALLBACKS = Counter(
    "rate_limit_fallbacks_total",
    "Requests let through unchecked because the rate limits' storage (Redis) did not answer.",
)


class InFlight:
    """Requests being answered now, in a plain int: prometheus-client's
    Gauge takes a lock on every inc() and dec(), two per request. Copied
    into http_requests_in_flight by `sample_in_flight`, every
    FLUSH_SECONDS and before each /metrics answer."""

    def __init__(self) -> None:
        self.count = 0


REQUESTS_IN_FLIGHT = InFlight()


def sample_in_flight() -> None:
    IN_FLIGHT.set(REQUESTS_IN_FLIGHT.count)


def set_build_info(version: str, database: str) -> None:
    BUILD_INFO.labels(version, platform.python_version(), database).set(1)


class RequestMetrics:
    """Counts a request in two lookups of our own (prometheus-client's
    `labels()` validates and locks on every call)."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, int, str], Counter] = {}
        self._timers: dict[tuple[str, str, str], Histogram] = {}

    def record(self, method: str, route: str, status: int, seconds: float, caller: str) -> None:
        counter = self._counters.get((method, route, status, caller))
        if counter is None:
            counter = self._counters[(method, route, status, caller)] = REQUESTS.labels(
                method, route, str(status), caller
            )
        timer = self._timers.get((method, route, caller))
        if timer is None:
            timer = self._timers[(method, route, caller)] = DURATION.labels(method, route, caller)
        counter.inc()
        timer.observe(seconds)


def set_pool_usage(in_use: int, idle: int) -> None:
    POOL.labels("in_use").set(in_use)
    POOL.labels("idle").set(idle)


def exposition() -> bytes:
    """Every metric in Prometheus text format (all workers', in multiprocess mode)."""
    sample_in_flight()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
