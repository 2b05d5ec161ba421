"""Logging: one line per request and per event, JSON or text (LOG_FORMAT).

Each request is logged once, when it is answered, by the request middleware
(middleware.py): request id, caller, method, route template, status,
duration, and the user id when the path names one. Never the query string
(it may hold an email filter), a body, or a header: no API key and no email
address reaches the log. Errors log their traceback here, server-side only,
with the request id; an email address in a message or traceback is masked.

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

from users_service.request_context import current_request_id
from users_service.settings import LogFormat, Settings

ACCESS_LOGGER = "users_service.access"
FLUSH_SECONDS = 0.5
BUFFERED_RECORDS = 200

_EMAIL = re.compile(r"[^\s@'\"<>(),;:]+@[^\s@'\"<>(),;:]+\.[A-Za-z0-9-]+")
# What the access log adds to a record (logging's `extra`).
ACCESS_FIELDS = ("caller", "method", "route", "status", "duration_ms", "user_id")


def mask_emails(text: str) -> str:
    return _EMAIL.sub("<email>", text) if "@" in text else text


class JSONFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": mask_emails(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            line["request_id"] = request_id
        for field in ACCESS_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["traceback"] = mask_emails(self.formatException(record.exc_info))
        return orjson.dumps(line).decode()


class TextFormatter(logging.Formatter):
    """`time level logger message key=value...`, for people."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.msg, record.args = mask_emails(record.getMessage()), None
        text = super().format(record)
        fields = [
            f"{field}={getattr(record, field)}"
            for field in ACCESS_FIELDS
            if getattr(record, field, None) is not None
        ]
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id and "request_id=" not in text:
            fields.insert(0, f"request_id={request_id}")
        if fields:
            head, _, tail = text.partition("\n")
            text = f"{head} {' '.join(fields)}" + (f"\n{tail}" if tail else "")
        return mask_emails(text) if record.exc_info else text


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


def flush_logs() -> None:
    if _handler is not None:
        _handler.flush()
