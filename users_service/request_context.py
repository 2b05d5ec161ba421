"""The id of the request being served, for answers and log lines."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar, Token

from starlette.types import Scope

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9\-_.:]{1,128}")

_request_id: ContextVar[str] = ContextVar("request_id", default="")


def current_request_id() -> str:
    return _request_id.get()


def set_request_id(request_id: str) -> Token[str]:
    return _request_id.set(request_id)


def reset_request_id(token: Token[str]) -> None:
    _request_id.reset(token)


def request_id_from(scope: Scope) -> str:
    """The caller's X-Request-ID when well-formed, else a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _VALID_REQUEST_ID.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return uuid.uuid4().hex


# The trace and span of the request being served, as hex (tracing.py sets
# them when tracing is on), for its log lines.
_trace_ids: ContextVar[tuple[str, str] | None] = ContextVar("trace_ids", default=None)


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the request's span; None when not traced."""
    return _trace_ids.get()


def set_trace_ids(trace_ids: tuple[str, str] | None) -> Token[tuple[str, str] | None]:
    return _trace_ids.set(trace_ids)


def reset_trace_ids(token: Token[tuple[str, str] | None]) -> None:
    _trace_ids.reset(token)
