"""Prometheus metrics, served at GET /metrics.

- `http_requests_total{method, route, status}` and
  `http_request_duration_seconds{method, route}`: every request, by route
  template (`/users/{user_id}`), counted by the request middleware.
- `users_created_total`, `users_updated_total`, `users_deleted_total`.
- `db_pool_connections{state="in_use"|"idle"}`: sampled every second.
- `http_connections_refused_total{reason}`: 431s and 408s written by the
  connection itself (api/connections.py), which no request line counts.

Several workers (uvicorn --workers N): set PROMETHEUS_MULTIPROC_DIR to an
empty directory that only this service uses (wiped before each start); each
worker then keeps its figures in a file there and /metrics, whichever
worker answers it, adds them up (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os

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

REQUESTS = Counter("http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival to its answer.",
    ["method", "route"],
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


class RequestMetrics:
    """Counts a request in two lookups of our own (prometheus-client's
    `labels()` validates and locks on every call)."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._timers: dict[tuple[str, str], Histogram] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = self._counters[(method, route, status)] = REQUESTS.labels(
                method, route, str(status)
            )
        timer = self._timers.get((method, route))
        if timer is None:
            timer = self._timers[(method, route)] = DURATION.labels(method, route)
        counter.inc()
        timer.observe(seconds)


def set_pool_usage(in_use: int, idle: int) -> None:
    POOL.labels("in_use").set(in_use)
    POOL.labels("idle").set(idle)


def exposition() -> bytes:
    """Every metric in Prometheus text format (all workers', in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
