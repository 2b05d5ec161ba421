"""Tracing with OpenTelemetry: off unless the standard OTEL_* variables ask.

Off (the default), nothing of OpenTelemetry is imported and nothing is added
to the request path. On (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set, or `OTEL_TRACES_EXPORTER=otlp`;
`console` prints spans instead; `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` keep it off):

- every HTTP request is a SERVER span, `GET /users/{user_id}`, continuing the
  W3C `traceparent` (and `tracestate`) it arrived with, else a new trace;
- each database statement of the request path is a CLIENT child span (the
  statement with its placeholders, never its values);
- the request's log lines carry `trace_id` and `span_id`;
- spans go out in batches over OTLP/HTTP (protobuf) from a background thread.

Everything else (the endpoint, headers, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, the sampler, the batch sizes) is OpenTelemetry's
own reading of its environment variables.

The statement spans are ours, around `Connection.one/all/run/run_many`: the
request path runs its statements on the drivers directly (db/database.py),
where SQLAlchemy's instrumentation would see none of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from users_service import __version__
from users_service.request_context import reset_trace_ids, set_trace_ids

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from sqlalchemy.engine import Dialect

    from users_service.db.database import Connection, Database
    from users_service.db.statements import Row, Statement

SERVICE_NAME = "users-service"
EXPORTERS = ("otlp", "console", "none")
PROTOCOL = "http/protobuf"
_PROPAGATED = (b"traceparent", b"tracestate")


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporters(environ)
    if exporters:
        return exporters != ["none"]
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def tracing_problems(environ: Mapping[str, str]) -> list[str]:
    """What this service cannot do of what the OTEL_* variables ask."""
    if not tracing_requested(environ):
        return []
    problems = [
        f"OTEL_TRACES_EXPORTER: {name!r} is not one of {', '.join(EXPORTERS)}"
        for name in _exporters(environ)
        if name not in EXPORTERS
    ]
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(variable, "").strip()
        if protocol and protocol != PROTOCOL:
            problems.append(f"{variable}: only {PROTOCOL} is supported (OTLP over HTTP)")
            break
        if protocol:
            break  # the signal's own setting wins over the general one
    return problems


def _exporters(environ: Mapping[str, str]) -> list[str]:
    value = environ.get("OTEL_TRACES_EXPORTER", "")
    return [name.strip().lower() for name in value.split(",") if name.strip()]


class Tracing:
    """The process's tracer provider and what the app wraps with it."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        # Imported here: with tracing off, none of it is loaded.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create({"service.version": __version__})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        self.provider: TracerProvider = TracerProvider(resource=resource)
        for name in _exporters(environ) or ["otlp"]:
            if name == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                self.provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            elif name == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer: Tracer = self.provider.get_tracer("users_service", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.server, self.client = SpanKind.SERVER, SpanKind.CLIENT
        self.error = StatusCode.ERROR

    def shutdown(self) -> None:
        """Export what is still buffered, then stop (the app's lifespan end)."""
        self.provider.shutdown()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        return TracingMiddleware(app, self)

    def trace_database(self, database: Database) -> None:
        """Wrap the connections `database` hands out: a span per statement."""
        read, transaction = database.read, database.transaction
        statements = database.statements
        system = database.engine.url.get_backend_name()  # mariadb, not mysql
        tracer, kind = self.tracer, self.client

        @asynccontextmanager
        async def traced_read(*, heavy: bool = False) -> AsyncIterator[Connection]:
            async with read(heavy=heavy) as connection:
                yield TracedConnection(connection, tracer, kind, system)

        def traced(writes: Callable[[], AbstractAsyncContextManager[Connection]]) -> Any:
            @asynccontextmanager
            async def traced_writes() -> AsyncIterator[Connection]:
                async with writes() as connection:
                    if isinstance(connection, TracedConnection):  # statements() as transaction()
                        yield connection
                    else:
                        yield TracedConnection(connection, tracer, kind, system)

            return traced_writes

        database.read = traced_read  # type: ignore[method-assign]
        database.transaction = traced(transaction)  # type: ignore[method-assign]
        database.statements = traced(statements)  # type: ignore[method-assign]


class TracingMiddleware:
    """Outermost: a SERVER span per request, continuing its `traceparent`;
    the span's ids are current for the request's log lines."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracing = self.tracing
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _PROPAGATED
        }
        parent = tracing.propagator.extract(carrier) if carrier else None
        method = scope["method"]
        status = 500
        request_id = None

        async def send_traced(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-request-id":
                        request_id = value.decode("latin-1")
            await send(message)

        with tracing.tracer.start_as_current_span(
            method,
            context=parent,
            kind=tracing.server,
            attributes={"http.request.method": method, "url.path": scope["path"]},
            record_exception=False,  # its traceback is logged, with the emails masked
            set_status_on_exception=False,
        ) as span:
            ids = span.get_span_context()
            token = set_trace_ids((format(ids.trace_id, "032x"), format(ids.span_id, "016x")))
            try:
                await self.app(scope, receive, send_traced)
            except BaseException as error:
                _failed(span, error)
                raise
            finally:
                reset_trace_ids(token)
                _describe_request(span, scope, method, status, request_id, tracing)


def _describe_request(
    span: Span, scope: Scope, method: str, status: int, request_id: str | None, tracing: Tracing
) -> None:
    template = getattr(scope.get("route"), "path_format", None)
    if template:
        span.update_name(f"{method} {template}")
        span.set_attribute("http.route", template)
    span.set_attribute("http.response.status_code", status)
    caller = scope.get("state", {}).get("caller")
    if caller:
        span.set_attribute("users_service.caller", caller)
    if request_id:
        span.set_attribute("users_service.request_id", request_id)
    if status >= 500:
        span.set_status(tracing.error)


def _failed(span: Span, error: BaseException) -> None:
    from opentelemetry.trace import StatusCode

    span.set_attribute("error.type", type(error).__name__)
    span.set_status(StatusCode.ERROR)


class TracedConnection:
    """A connection whose statements are each a CLIENT span."""

    def __init__(self, connection: Connection, tracer: Tracer, kind: Any, system: str) -> None:
        self._connection = connection
        self._tracer = tracer
        self._kind = kind
        self._system = system
        self.dialect: Dialect = connection.dialect

    @contextmanager
    def _span(self, statement: Statement) -> Iterator[None]:
        operation = statement.sql.lstrip().split(None, 1)[0].upper()
        with self._tracer.start_as_current_span(
            operation,
            kind=self._kind,
            attributes={
                "db.system.name": self._system,
                "db.operation.name": operation,
                "db.query.text": statement.sql,
            },
            # A driver's message may quote a value (the email a unique index
            # refused): a failed statement's span names the error's type only.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as error:
                _failed(span, error)
                raise

    async def one(self, statement: Statement, values: Mapping[str, Any] = {}) -> Row | None:
        with self._span(statement):
            return await self._connection.one(statement, values)

    async def all(self, statement: Statement, values: Mapping[str, Any] = {}) -> list[Row]:
        with self._span(statement):
            return await self._connection.all(statement, values)

    async def run(self, statement: Statement, values: Mapping[str, Any] = {}) -> int:
        with self._span(statement):
            return await self._connection.run(statement, values)

    async def run_many(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        with self._span(statement):
            await self._connection.run_many(statement, rows)
