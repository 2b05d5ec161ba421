"""Logging: one line per request and per event, JSON or text (LOG_FORMAT).

Each request is logged once, when it is answered, by the request middleware
(middleware.py): request id, caller, method, route template, status,
duration, the peer's address (and the X-Forwarded-For it sent, when it is a
trusted proxy), and the user id when the path names one. Never the query
string (it may hold an email filter), a body, or another header: no API key
and no email address reaches the log. Errors log their traceback here,
server-side only, with the request id; an email address in a message or
traceback is masked.

What a caller sent can never forge a line: JSON lines are JSON (orjson
escapes every control character); in text lines a message has its
non-printable characters escaped (`\n`, `\x1b`, ...), a field's value is
quoted and escaped unless it is plain (`user_id="x y\n"`), and the lines
that follow a record's first (its traceback) are indented. So a line that
does not start with a space is a record, and a record is what it says.

Lines are buffered and written in batches (at most FLUSH_SECONDS late, and
at once for a warning or worse): a write per request would cost as much as
the rest of the logging.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
import time
from typing import Any

import orjson

from users_service.request_context import current_request_id, current_trace_ids
from users_service.settings import LogFormat, Settings

ACCESS_LOGGER = "users_service.access"
FLUSH_SECONDS = 0.5
BUFFERED_RECORDS = 200

_EMAIL = re.compile(r"[^\s@'\"<>(),;:]+@[^\s@'\"<>(),;:]+\.[A-Za-z0-9-]+")


def mask_emails(text: str) -> str:
    return _EMAIL.sub("<email>", text) if "@" in text else text


def escape_unprintable(text: str) -> str:
    """`text` with every character Python does not call printable (line
    breaks, ESC, U+2028, ...) escaped as `repr` escapes it: one line."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


# A field value written as it is: printable ASCII but space, '"', '=' and '\\'.
_PLAIN_VALUE = re.compile(r"[!#-<>-\[\]-~]+")


def text_value(value: str) -> str:
    """A field's value for a text line: as it is when plain, else quoted with
    `\\` and `"` escaped and unprintable characters escaped (as logfmt)."""
    if _PLAIN_VALUE.fullmatch(value):
        return value
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escape_unprintable(quoted)}"'


class JSONFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_emails(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        trace_ids = getattr(record, "trace_ids", None)
        if trace_ids:
            line["trace_id"], line["span_id"] = trace_ids
        if record.exc_info:
            line["traceback"] = mask_emails(self.formatException(record.exc_info))
        return orjson.dumps(line).decode()


def utc_timestamp(created: float) -> str:
    """`2026-11-27T21:37:05.399Z`: the time of every line, JSON or text."""
    second = int(created)
    milliseconds = int((created - second) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{milliseconds:03d}Z"


class TextFormatter(logging.Formatter):
    """`time level logger message request_id=...`, for people: the message
    on one line (escaped), a traceback on the indented lines below it."""

    def format(self, record: logging.LogRecord) -> str:
        message = escape_unprintable(mask_emails(record.getMessage()).rstrip())
        line = f"{utc_timestamp(record.created)} {record.levelname} {record.name} {message}"
        request_id = getattr(record, "request_id", None)
        if request_id and "request_id=" not in message:
            line = f"{line} request_id={request_id}"
        trace_ids = getattr(record, "trace_ids", None)
        if trace_ids:
            line = f"{line} trace_id={trace_ids[0]} span_id={trace_ids[1]}"
        details = []
        if record.exc_info:
            details.append(self.formatException(record.exc_info))
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        for detail in details:
            for detail_line in mask_emails(detail).splitlines():
                line += "\n    " + escape_unprintable(detail_line)
        return line


def stamp_request_id(record: logging.LogRecord) -> bool:
    """Note the request being served, and its trace when tracing is on, on
    the record (it is formatted later)."""
    record.request_id = current_request_id()
    record.trace_ids = current_trace_ids()
    return True


class BufferedHandler(logging.handlers.MemoryHandler):
    """Writes lines in batches: when BUFFERED_RECORDS are waiting, on a
    warning or worse, and (flush_now, called every FLUSH_SECONDS) when idle."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__(BUFFERED_RECORDS, flushLevel=logging.WARNING, target=target)

    def flush(self) -> None:
        self.acquire()
        try:
            if self.target is not None and self.buffer:
                stream = getattr(self.target, "stream", None)
                lines = "".join(self.target.format(record) + "\n" for record in self.buffer)
                self.buffer.clear()
                if stream is not None:
                    stream.write(lines)
                    stream.flush()
        finally:
            self.release()


class AccessLog:
    """The one line per request, formatted here and written in batches with
    the other buffered lines (a LogRecord per request costs as much as the
    rest of the line's work). Same format and stream as the logging module's
    lines, under the logger name ACCESS_LOGGER."""

    @classmethod
    def for_settings(cls, settings: Settings) -> AccessLog:
        """The app's access log (its owner flushes it every FLUSH_SECONDS)."""
        return cls(settings.effective_log_format, settings.log_level.value in ("DEBUG", "INFO"))

    def __init__(self, log_format: LogFormat, enabled: bool) -> None:
        self.enabled = enabled
        # Set when tracing is on: each line names its request's trace and span.
        self.traced = False
        self._json = log_format is LogFormat.json
        self._lines: list[str] = []
        self._second = -1
        self._time_prefix = ""

    def _time(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._time_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._time_prefix}.{int((now - second) * 1000):03d}Z"

    def write(
        self,
        *,
        request_id: str,
        caller: str | None,
        method: str,
        route: str,
        status: int,
        duration_ms: float,
        peer: str,
        forwarded_for: str | None,
        user_id: str | None,
    ) -> None:
        """One request's line. `request_id` (checked by request_id_from),
        `caller` (from the settings), `method` (checked by the HTTP parser),
        `route` (a template) and `peer` (an address) are written as they are;
        `forwarded_for` and `user_id`, as the caller sent them, are escaped."""
        if self._json:
            line: dict[str, Any] = {
                "time": self._time(),
                "level": "INFO",
                "logger": ACCESS_LOGGER,
                "message": f"{method} {route} {status}",
                "request_id": request_id,
                "caller": caller,
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "peer": peer,
            }
            if forwarded_for is not None:
                line["forwarded_for"] = forwarded_for
            if user_id is not None:
                line["user_id"] = user_id
            if self.traced and (trace_ids := current_trace_ids()):
                line["trace_id"], line["span_id"] = trace_ids
            self._lines.append(orjson.dumps(line).decode())
        else:
            text = (
                f"{self._time()} INFO {ACCESS_LOGGER} {method} {route} {status} "
                f"request_id={request_id} caller={caller} duration_ms={duration_ms} peer={peer}"
            )
            if forwarded_for is not None:
                text = f"{text} forwarded_for={text_value(forwarded_for)}"
            if user_id is not None:
                text = f"{text} user_id={text_value(user_id)}"
            if self.traced and (trace_ids := current_trace_ids()):
                text = f"{text} trace_id={trace_ids[0]} span_id={trace_ids[1]}"
            self._lines.append(text)
        if len(self._lines) >= BUFFERED_RECORDS:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()


_handler: BufferedHandler | None = None


def configure_logging(settings: Settings, *, buffered: bool = True) -> None:
    """Send every logger (the service's, uvicorn's) through one handler;
    `buffered` for a process that calls flush_logs() every FLUSH_SECONDS."""
    global _handler
    stream = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        JSONFormatter() if settings.effective_log_format is LogFormat.json else TextFormatter()
    )
    stream.setFormatter(formatter)
    handler: logging.Handler = stream
    if buffered:
        handler = _handler = BufferedHandler(stream)
    handler.addFilter(stamp_request_id)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.value)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Our access log replaces uvicorn's (which would log query strings).
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic's start-up chatter (its plugins, read at start-up) is not news.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def flush_logs() -> None:
    if _handler is not None:
        _handler.flush()
