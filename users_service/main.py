"""The application factory: `uvicorn --factory users_service.main:create_app`."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from users_service import __version__
from users_service.api import docs, health, users
from users_service.api.auth import ApiKeyMiddleware
from users_service.api.middleware import (
    BodyLimitMiddleware,
    PerCallerMiddleware,
    RequestContextMiddleware,
)
from users_service.api.problems import install_error_handlers
from users_service.api.ratelimit import CallerLimits
from users_service.api.routing import head_routes
from users_service.changes import prune_old_changes
from users_service.db.database import Database, create_database
from users_service.db.engine import configure_threadpool, create_db_engine
from users_service.db.schema import migration_revisions
from users_service.idempotency import KeyUsage, sweep_expired_idempotency_keys
from users_service.logs import FLUSH_SECONDS, AccessLog, configure_logging, flush_logs
from users_service.metrics import sample_in_flight, set_build_info, set_pool_usage
from users_service.pagination import CursorCodec
from users_service.settings import Settings, load_settings
from users_service.tracing import Tracing

DESCRIPTION = """\
The users of the company's system: create, read, update, delete and list
them. Errors are RFC 9457 problem details (`application/problem+json`) with
a stable `code`; every answer carries `X-Request-ID`.
"""


async def flush_and_sample(database: Database, access_log: AccessLog) -> None:
    """Every FLUSH_SECONDS: write out buffered log lines; sample the
    connection pool and the requests in flight for /metrics."""
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        flush_logs()
        access_log.flush()
        await database.prune()
        set_pool_usage(*database.pool_usage())
        sample_in_flight()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings)
    engine = create_db_engine(settings)
    database = create_database(engine, settings)
    access_log = AccessLog.for_settings(settings)
    idempotency_usage = KeyUsage.for_settings(settings)
    # Off unless OTEL_* asks: then OpenTelemetry is imported, and only then.
    tracing = Tracing(os.environ) if settings.tracing_enabled else None
    if tracing is not None:
        tracing.trace_database(database)
        access_log.traced = True
    set_build_info(__version__, engine.dialect.name)
    rate_limits = (
        CallerLimits(
            settings.rate_limit_table,
            settings.rate_limit_storage_url.get_secret_value(),
            settings.rate_limit_key_prefix,
        )
        if settings.rate_limit_table
        else None
    )
    retention = timedelta(days=settings.changes_retention_days)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        configure_threadpool(settings)
        await database.start()
        # What start-up made lives as long as the process: keep the garbage
        # collector from walking it again and again (shorter pauses, p99).
        gc.collect()
        gc.freeze()
        background = [
            asyncio.create_task(
                sweep_expired_idempotency_keys(
                    database, idempotency_usage, settings.idempotency_sweep_seconds
                )
            ),
            asyncio.create_task(prune_old_changes(database, retention)),
            asyncio.create_task(flush_and_sample(database, access_log)),
        ]
        yield
        for task in background:
            task.cancel()
        flush_logs()
        access_log.flush()
        await database.close()
        if tracing is not None:
            tracing.shutdown()
        if rate_limits is not None:
            await rate_limits.close()

    app = FastAPI(
        # The routers' routes themselves, not include_router(): FastAPI 0.165
        # matches an included router as a second level of routes, a seventh
        # of a GET's cost in the profile (docs/design.md).
        routes=[*users.router.routes, *health.router.routes],
        # Our own metrics and logs (metrics.py, logs.py); FastAPI's
        # OpenTelemetry hooks would only check the environment per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="users-service",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # /users/ is not /users: answer 404 rather than redirect.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.database = database
    app.state.idempotency_usage = idempotency_usage
    app.state.cursor_codec = CursorCodec(settings.cursor_secrets)
    app.state.schema_heads, app.state.schema_revisions = migration_revisions()

    install_error_handlers(app)
    # Outermost last: request ids and the access log, then the client behind
    # a trusted proxy (here, not in uvicorn, so that the log also knows the
    # peer), then API keys, then each caller's rate limit (when RATE_LIMITS
    # sets one) and requests in flight, in one layer, then the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        PerCallerMiddleware,
        limit=settings.max_requests_in_flight_per_caller,
        rate_limits=rate_limits,
    )
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_key_list)
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    app.add_middleware(RequestContextMiddleware, access_log=access_log)
    if tracing is not None:  # outermost: the access line is written inside the span
        app.add_middleware(tracing.middleware)
    docs.install_docs(app)
    docs.complete_document(app)
    app.router.routes.extend(head_routes(app.router.routes))
    return app
