"""The Python client of users-service: `UsersClient` (sync) and `AsyncUsersClient`.

It needs httpx and pydantic, and nothing of the server: its types
(models.py) are generated from the service's openapi.json.

Both are thin transports around one shared core: every operation is first
built as a `Call` (method, path, query, body, headers, how its answer is
read, and whether it may be repeated), and every answer is read by the same
functions. The two classes differ only in how they send a request and how
they wait between attempts.

Retries (see `RetryPolicy`):

- A request that never left (the connection could not be made, or no pooled
  connection was free) is retried whatever it is: the server never saw it.
- A request that may have reached the server (the connection broke or timed
  out after it was sent, or a proxy in front of the service answered 502 or
  504: the service itself never does) and a 503 are retried only when
  repeating the request cannot do more than doing it once:

  * `GET`: reads change nothing.
  * `PUT` and `PATCH`: they set absolute values (a JSON merge patch has no
    increments), so applying one twice leaves what applying it once does.
    With `If-Match`, a repeat can never overwrite someone else's change: if
    the first attempt did land, the repeat answers 412 and `VersionMismatch`
    is raised with `earlier_attempt_unknown` set; re-read the user to see.
  * `DELETE`: if a repeat answers 404 after an attempt whose outcome was
    unknown, the user is gone either way and `delete_user` returns normally.
  * `POST /users` and `POST /users/batch` carry an `Idempotency-Key` (a new
    uuid4 per call, the same for all its attempts): the server answers a
    repeat with the first answer and creates nothing, and answers 409
    `idempotency_key_in_use` while the first is still running, which is
    retried too. Without a key (`idempotency_keys=False`) a create is never
    repeated once it may have reached the server.

- Waits grow exponentially with full jitter (a random wait between 0 and
  `backoff * 2**retry`, at most `max_backoff`), and are never shorter than
  the server's `Retry-After`; a `Retry-After` over `max_retry_after` is not
  waited for and the error is raised.

Errors: every problem answer raises a subclass of `UsersServiceError`
chosen by its `code` (else by its status); network failures that outlast
the retries raise httpx's own `httpx.TransportError`.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, Unpack

import httpx
from pydantic import TypeAdapter

from users_service_client.models import (
    ChangePage,
    ErrorCode,
    HistoryPage,
    NewUser,
    UserChanges,
    UserFilters,
    UserPage,
    UserPublic,
)

__version__ = "0.1.0"
logger = logging.getLogger("users_service_client")

T = TypeVar("T")

IDEMPOTENCY_KEY = "Idempotency-Key"
DEFAULT_TIMEOUT_SECONDS = 10.0
USER_AGENT = f"users-service-client/{__version__}"


# --- errors ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One entry of a problem's `errors`: where the request went wrong, and why."""

    loc: tuple[str | int, ...]
    msg: str
    type: str


class UsersServiceError(Exception):
    """An answer of users-service other than success, with its problem details.

    `code` is the problem's stable code (None when the answer was not a
    problem, say a proxy's error page). `earlier_attempt_unknown` is true
    when an earlier attempt of this call may have reached the server
    without its answer coming back (see the module's notes on retries).
    """

    status: int
    code: str | None

    def __init__(
        self,
        *,
        status: int,
        code: str | None,
        title: str,
        detail: str,
        errors: Sequence[FieldError] = (),
        request_id: str | None = None,
        retry_after: float | None = None,
        earlier_attempt_unknown: bool = False,
    ) -> None:
        super().__init__(f"{status} {code or title}: {detail}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.request_id = request_id
        self.retry_after = retry_after
        self.earlier_attempt_unknown = earlier_attempt_unknown


class Unauthorized(UsersServiceError):
    """401 `unauthorized`: no API key, or an unknown one."""


class Forbidden(UsersServiceError):
    """403 `forbidden`: this API key may only read."""


class NotFound(UsersServiceError):
    """404 `not_found`: no such route (a wrong base_url?). Base of every 404."""


class UserNotFound(NotFound):
    """404 `user_not_found`: no user with this id."""


class MethodNotAllowed(UsersServiceError):
    """405 `method_not_allowed`."""


class Conflict(UsersServiceError):
    """409: base of the conflicts below, and of any 409 with a code this client does not know."""


class EmailTaken(Conflict):
    """409 `email_taken`: another user has this email."""


class IdempotencyKeyInUse(Conflict):
    """409 `idempotency_key_in_use`: a request with this key is still running."""


class VersionMismatch(UsersServiceError):
    """412 `version_mismatch`: the user changed since the version in If-Match."""


class PayloadTooLarge(UsersServiceError):
    """413 `payload_too_large`."""


class UnsupportedMediaType(UsersServiceError):
    """415 `unsupported_media_type`."""


class RequestTimeout(UsersServiceError):
    """408 `request_timeout`: the request's headers did not arrive in time; nothing was done."""


class HeadersTooLarge(UsersServiceError):
    """431 `headers_too_large`: the request's headers are over the service's limit."""


class ValidationFailed(UsersServiceError):
    """422 `validation_failed`: `errors` says which input and why. Base of every 422."""


class IdempotencyKeyReused(ValidationFailed):
    """422 `idempotency_key_reused`: this Idempotency-Key was used with another body."""


class InternalError(UsersServiceError):
    """500 `internal_error`: the service failed; `request_id` finds it in its logs."""


class RateLimited(UsersServiceError):
    """429 `rate_limited`: this caller sent too much at once; retried after Retry-After."""


class IdempotencyQuotaExceeded(RateLimited):
    """429 `idempotency_quota_exceeded`: this caller keeps as many Idempotency-Keys as it
    may; a new key is refused until older ones expire. Not retried (its Retry-After is
    over `max_retry_after`): send the create without a key, or later."""


class ServiceUnavailable(UsersServiceError):
    """503 `service_unavailable`: the database is unreachable or busy; retry later."""


class CursorExpired(UsersServiceError):
    """410 `cursor_expired`: changes after this feed cursor are past the service's
    retention; start again without a cursor (and resynchronise from the list)."""


ERRORS_BY_CODE: dict[str, type[UsersServiceError]] = {
    ErrorCode.UNAUTHORIZED: Unauthorized,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.USER_NOT_FOUND: UserNotFound,
    ErrorCode.METHOD_NOT_ALLOWED: MethodNotAllowed,
    ErrorCode.EMAIL_TAKEN: EmailTaken,
    ErrorCode.IDEMPOTENCY_KEY_IN_USE: IdempotencyKeyInUse,
    ErrorCode.VERSION_MISMATCH: VersionMismatch,
    ErrorCode.PAYLOAD_TOO_LARGE: PayloadTooLarge,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: UnsupportedMediaType,
    ErrorCode.REQUEST_TIMEOUT: RequestTimeout,
    ErrorCode.HEADERS_TOO_LARGE: HeadersTooLarge,
    ErrorCode.VALIDATION_FAILED: ValidationFailed,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: IdempotencyKeyReused,
    ErrorCode.INTERNAL_ERROR: InternalError,
    ErrorCode.SERVICE_UNAVAILABLE: ServiceUnavailable,
    ErrorCode.RATE_LIMITED: RateLimited,
    ErrorCode.IDEMPOTENCY_QUOTA_EXCEEDED: IdempotencyQuotaExceeded,
    ErrorCode.CURSOR_EXPIRED: CursorExpired,
}
"""The exception for each code the service documents (a test checks that
every code in openapi.json has one)."""
ERRORS_BY_STATUS: dict[int, type[UsersServiceError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    410: CursorExpired,
    409: Conflict,
    412: VersionMismatch,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationFailed,
    429: RateLimited,
    431: HeadersTooLarge,
    500: InternalError,
    503: ServiceUnavailable,
}


def error_from_response(
    response: httpx.Response, *, earlier_attempt_unknown: bool = False
) -> UsersServiceError:
    """The exception for an error answer: by its problem `code`, else by its status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    problem: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    code = problem.get("code") if isinstance(problem.get("code"), str) else None
    error_class = ERRORS_BY_CODE.get(code or "") or ERRORS_BY_STATUS.get(
        response.status_code, UsersServiceError
    )
    title = _text(problem.get("title")) or _phrase(response.status_code)
    return error_class(
        status=response.status_code,
        code=code,
        title=title,
        detail=_text(problem.get("detail")) or title,
        errors=_field_errors(problem.get("errors")),
        request_id=_text(problem.get("request_id")) or response.headers.get("x-request-id"),
        retry_after=retry_after_seconds(response),
        earlier_attempt_unknown=earlier_attempt_unknown,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _field_errors(value: object) -> list[FieldError]:
    if not isinstance(value, list):
        return []
    return [
        FieldError(
            loc=tuple(part for part in item.get("loc", ()) if isinstance(part, str | int)),
            msg=str(item.get("msg", "")),
            type=str(item.get("type", "")),
        )
        for item in value
        if isinstance(item, Mapping)
    ]


def retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# --- the calls -------------------------------------------------------------------------


UserRef = UserPublic | uuid.UUID | str
"""A user to act on: the user itself (its version becomes If-Match) or its id.

Writes also take `if_match=`: a version (`3`) or an If-Match value as sent
(`'"3"'`, `"*"`); it overrides the user's own version.
"""

Reader = Callable[[httpx.Response, bool], T]
"""Reads a final answer; the flag says whether an earlier attempt may have landed."""


@dataclass(frozen=True)
class Call(Generic[T]):
    """One operation: what to send, whether repeating it is safe, how to read the answer."""

    method: str
    path: str
    read: Reader[T]
    params: Mapping[str, str] | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Repeating the request after it may have reached the server does no more
    # than sending it once.
    idempotent: bool = True
    # A 503 is the service asking to be retried (not so for /readyz, whose
    # 503 is the answer).
    retry_unavailable: bool = True
    # Seconds the server may take on purpose (a long poll), added to the timeout.
    server_wait: float = 0.0


def _read_model(model: type[Any]) -> Reader[Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(model)

    def read(response: httpx.Response, earlier_attempt_unknown: bool) -> Any:
        if not response.is_success:
            raise error_from_response(response, earlier_attempt_unknown=earlier_attempt_unknown)
        return adapter.validate_json(response.content)

    return read


_read_user: Reader[UserPublic] = _read_model(UserPublic)
_read_page: Reader[UserPage] = _read_model(UserPage)
_read_changes: Reader[ChangePage] = _read_model(ChangePage)
_read_history: Reader[HistoryPage] = _read_model(HistoryPage)


def _read_users(response: httpx.Response, earlier_attempt_unknown: bool) -> list[UserPublic]:
    if not response.is_success:
        raise error_from_response(response, earlier_attempt_unknown=earlier_attempt_unknown)
    items: list[UserPublic] = _USER_LIST.validate_python(response.json()["items"])
    return items


_USER_LIST: TypeAdapter[list[UserPublic]] = TypeAdapter(list[UserPublic])


def _read_deleted(response: httpx.Response, earlier_attempt_unknown: bool) -> None:
    if response.is_success:
        return
    if earlier_attempt_unknown and response.status_code == 404:
        # An earlier attempt may have deleted the user: gone either way.
        return
    raise error_from_response(response, earlier_attempt_unknown=earlier_attempt_unknown)


def _read_health(response: httpx.Response, earlier_attempt_unknown: bool) -> dict[str, str]:
    if not response.is_success:
        raise error_from_response(response, earlier_attempt_unknown=earlier_attempt_unknown)
    body: dict[str, str] = response.json()
    return body


def _read_readiness(response: httpx.Response, earlier_attempt_unknown: bool) -> dict[str, str]:
    if response.status_code == 503 and "application/json" in response.headers.get(
        "content-type", ""
    ):
        body: dict[str, str] = response.json()  # not ready: the body says why
        return body
    return _read_health(response, earlier_attempt_unknown)


def _user_path(user: UserRef) -> str:
    user_id = user.id if isinstance(user, UserPublic) else user
    return f"/users/{uuid.UUID(str(user_id))}"


def _if_match(user: UserRef, if_match: str | int | None) -> dict[str, str]:
    if if_match is None and isinstance(user, UserPublic):
        if_match = user.version
    if if_match is None:
        return {}
    return {"If-Match": f'"{if_match}"' if isinstance(if_match, int) else if_match}


def _query(values: Mapping[str, object]) -> dict[str, str]:
    query = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            query[name] = "true" if value else "false"
        elif isinstance(value, datetime):
            query[name] = value.isoformat()
        else:
            query[name] = str(value)
    return query


def _creation_headers(idempotency_key: str | None, automatic: bool) -> dict[str, str]:
    key = idempotency_key or (str(uuid.uuid4()) if automatic else None)
    return {IDEMPOTENCY_KEY: key} if key else {}


class Calls:
    """Builds each operation's `Call`; both clients send what these return."""

    def __init__(self, *, idempotency_keys: bool) -> None:
        self.idempotency_keys = idempotency_keys

    def create_user(self, fields: NewUser, idempotency_key: str | None) -> Call[UserPublic]:
        headers = _creation_headers(idempotency_key, self.idempotency_keys)
        return Call(
            "POST",
            "/users",
            _read_user,
            body=dict(fields),
            headers=headers,
            idempotent=IDEMPOTENCY_KEY in headers,
        )

    def create_users(
        self, users: Sequence[NewUser | Mapping[str, Any]], idempotency_key: str | None
    ) -> Call[list[UserPublic]]:
        headers = _creation_headers(idempotency_key, self.idempotency_keys)
        body = [dict(user) for user in users]
        return Call(
            "POST",
            "/users/batch",
            _read_users,
            body={"users": body},
            headers=headers,
            idempotent=IDEMPOTENCY_KEY in headers,
        )

    def get_user(self, user: UserRef) -> Call[UserPublic]:
        return Call("GET", _user_path(user), _read_user)

    def list_users(
        self, limit: int | None, cursor: str | None, include_total: bool, filters: UserFilters
    ) -> Call[UserPage]:
        params = _query(
            {"limit": limit, "cursor": cursor, "include_total": include_total or None, **filters}
        )
        return Call("GET", "/users", _read_page, params=params)

    def replace_user(
        self, user: UserRef, fields: NewUser, if_match: str | int | None
    ) -> Call[UserPublic]:
        return Call(
            "PUT",
            _user_path(user),
            _read_user,
            body=dict(fields),
            headers=_if_match(user, if_match),
        )

    def update_user(
        self, user: UserRef, changes: UserChanges, if_match: str | int | None
    ) -> Call[UserPublic]:
        return Call(
            "PATCH",
            _user_path(user),
            _read_user,
            body=dict(changes),
            headers=_if_match(user, if_match),
        )

    def delete_user(self, user: UserRef, if_match: str | int | None) -> Call[None]:
        return Call("DELETE", _user_path(user), _read_deleted, headers=_if_match(user, if_match))

    def list_changes(
        self, cursor: str | None, limit: int | None, wait: float | None
    ) -> Call[ChangePage]:
        params = _query({"cursor": cursor, "limit": limit, "wait": wait})
        return Call("GET", "/users/changes", _read_changes, params=params, server_wait=wait or 0.0)

    def user_history(
        self, user: UserRef, limit: int | None, cursor: str | None
    ) -> Call[HistoryPage]:
        params = _query({"limit": limit, "cursor": cursor})
        return Call("GET", f"{_user_path(user)}/history", _read_history, params=params)

    def health(self) -> Call[dict[str, str]]:
        return Call("GET", "/healthz", _read_health)

    def readiness(self) -> Call[dict[str, str]]:
        return Call("GET", "/readyz", _read_readiness, retry_unavailable=False)


# --- retries ---------------------------------------------------------------------------

# Failures raised before any byte of the request was sent: always safe to retry.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Answers of a proxy in front of the service (HAProxy, a load balancer) that
# lost the service's answer: a replica died or timed out with the request.
# The service never sends them. Whether the request ran is unknown.
GATEWAY_FAILURES = (502, 504)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry (see the module's notes for what is retried)."""

    attempts: int = 4
    """Attempts per call, the first one included (1: never retry)."""
    backoff: float = 0.2
    """Seconds: retry n waits a random time in [0, backoff * 2**(n-1)]."""
    max_backoff: float = 10.0
    """Ceiling of the random wait."""
    max_retry_after: float = 30.0
    """A longer Retry-After is not waited for: the error is raised at once."""


class Attempts:
    """The attempts of one call: decides whether, and after how long, to try again."""

    def __init__(self, call: Call[Any], policy: RetryPolicy, rng: random.Random) -> None:
        self.call = call
        self.policy = policy
        self.rng = rng
        self.made = 0
        # An earlier attempt may have reached the server without its answer reaching us.
        self.outcome_unknown = False

    def delay_after_error(self, error: httpx.TransportError) -> float | None:
        """Seconds to wait before the next attempt after `error`, or None to give up."""
        sent = not isinstance(error, NOT_SENT)
        if sent and not self.call.idempotent:
            return None
        self.outcome_unknown = self.outcome_unknown or sent
        return self._next_delay(None, f"{type(error).__name__}")

    def delay_after_answer(self, response: httpx.Response) -> float | None:
        """Seconds to wait before the next attempt after `response`, or None to keep it."""
        if response.status_code == 429:
            # Refused before it ran: safe to repeat, whatever the call.
            return self._next_delay(retry_after_seconds(response), "429")
        if not self.call.idempotent:
            return None
        if response.status_code == 503 and self.call.retry_unavailable:
            return self._next_delay(retry_after_seconds(response), "503")
        if response.status_code in GATEWAY_FAILURES:
            self.outcome_unknown = True
            return self._next_delay(retry_after_seconds(response), str(response.status_code))
        if (
            response.status_code == 409
            and IDEMPOTENCY_KEY in self.call.headers
            and error_from_response(response).code == "idempotency_key_in_use"
        ):
            return self._next_delay(retry_after_seconds(response), "idempotency_key_in_use")
        return None

    def _next_delay(self, retry_after: float | None, reason: str) -> float | None:
        if self.made >= self.policy.attempts:
            return None
        if retry_after is not None and retry_after > self.policy.max_retry_after:
            return None
        ceiling = min(self.policy.max_backoff, self.policy.backoff * 2 ** (self.made - 1))
        delay = max(self.rng.uniform(0, ceiling), retry_after or 0.0)
        logger.info(
            "retrying %s %s after %s in %.2f s (attempt %d of %d)",
            self.call.method,
            self.call.path,
            reason,
            delay,
            self.made + 1,
            self.policy.attempts,
        )
        return delay


# --- request ids and traces ------------------------------------------------------------

_FORWARDED: ContextVar[Mapping[str, str] | None] = ContextVar(
    "users_service_client_forwarded", default=None
)
_TRACE_HEADERS = ("traceparent", "tracestate")


@contextmanager
def forwarding(*, request_id: str | None = None, traceparent: str | None = None) -> Iterator[None]:
    """Calls made in this block (by this thread or task, and the tasks it
    starts) send `X-Request-ID: <request_id>` and `traceparent: <traceparent>`,
    so that the service's log lines and spans join the caller's own request.

    With OpenTelemetry installed and a span current, that span's
    `traceparent` (and `tracestate`) is sent instead of the one given here.
    """
    headers = dict(_FORWARDED.get() or {})
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    if traceparent is not None:
        headers["traceparent"] = traceparent
    token = _FORWARDED.set(headers)
    try:
        yield
    finally:
        _FORWARDED.reset(token)


def forwarded_headers() -> dict[str, str]:
    """What a call made now forwards: `forwarding()`'s headers, and the
    current OpenTelemetry span's trace context when there is one."""
    headers = dict(_FORWARDED.get() or {})
    headers.update(_current_trace_context())
    return headers


@functools.cache
def _opentelemetry() -> tuple[Any, Any] | None:
    """opentelemetry's propagate and trace modules, or None: the client does
    not depend on it, and uses it when the application has it."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None
    return propagate, trace


def _current_trace_context() -> dict[str, str]:
    found = _opentelemetry()
    if found is None:
        return {}
    propagate, trace = found
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {name: value for name, value in carrier.items() if name in _TRACE_HEADERS}


# --- the clients -----------------------------------------------------------------------


class _ClientBase:
    def __init__(
        self,
        *,
        api_key: str | None,
        retry: RetryPolicy | None,
        idempotency_keys: bool,
        rng: random.Random | None,
    ) -> None:
        self.calls = Calls(idempotency_keys=idempotency_keys)
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def _attempts(self, call: Call[Any]) -> Attempts:
        return Attempts(call, self.retry, self._rng)

    def _request(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
        content = None
        headers = {**forwarded_headers(), **call.headers}
        if call.body is not None:
            content = json.dumps(call.body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        extensions = {}
        if call.server_wait:
            timeout = http.timeout.as_dict()
            if timeout["read"] is not None:
                timeout["read"] += call.server_wait
            extensions["timeout"] = timeout
        return http.build_request(
            call.method,
            call.path,
            params=call.params,
            content=content,
            headers=headers,
            extensions=extensions,
        )


class UsersClient(_ClientBase):
    """A synchronous client. Use as a context manager, or call `close()`.

    `transport` replaces httpx's network transport (tests pass one that
    reaches the app in process, or that fails on purpose); `sleep` is how
    the client waits between attempts.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
        idempotency_keys: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(api_key=api_key, retry=retry, idempotency_keys=idempotency_keys, rng=rng)
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send `call`, retrying as its policy allows, and read its final answer."""
        attempts = self._attempts(call)
        while True:
            attempts.made += 1
            try:
                response = self._http.send(self._request(self._http, call))
            except httpx.TransportError as error:
                delay = attempts.delay_after_error(error)
                if delay is None:
                    raise
            else:
                delay = attempts.delay_after_answer(response)
                if delay is None:
                    return call.read(response, attempts.outcome_unknown)
            self._sleep(delay)

    def create_user(
        self, *, idempotency_key: str | None = None, **fields: Unpack[NewUser]
    ) -> UserPublic:
        """POST /users with the user's fields as keyword arguments."""
        return self.send(self.calls.create_user(fields, idempotency_key))

    def create_users(
        self,
        users: Sequence[NewUser | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[UserPublic]:
        """Create 1-1000 users, all or none, in the order given."""
        return self.send(self.calls.create_users(users, idempotency_key))

    def get_user(self, user: UserRef) -> UserPublic:
        return self.send(self.calls.get_user(user))

    def list_users(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        include_total: bool = False,
        **filters: Unpack[UserFilters],
    ) -> UserPage:
        """One page; pass its `next_cursor` (with the same filters) for the next."""
        return self.send(self.calls.list_users(limit, cursor, include_total, filters))

    def iter_users(
        self, *, limit: int | None = None, **filters: Unpack[UserFilters]
    ) -> Iterator[UserPublic]:
        """Every user that matches, page after page (`limit` users per request)."""
        cursor = None
        while True:
            page = self.list_users(limit=limit, cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def replace_user(
        self, user: UserRef, *, if_match: str | int | None = None, **fields: Unpack[NewUser]
    ) -> UserPublic:
        """PUT every field. Given a `UserPublic`, only if it is still at that version
        (else VersionMismatch)."""
        return self.send(self.calls.replace_user(user, fields, if_match))

    def update_user(
        self, user: UserRef, *, if_match: str | int | None = None, **changes: Unpack[UserChanges]
    ) -> UserPublic:
        """PATCH the fields given. Given a `UserPublic`, only if it is still at that version."""
        return self.send(self.calls.update_user(user, changes, if_match))

    def delete_user(self, user: UserRef, *, if_match: str | int | None = None) -> None:
        """DELETE. Given a `UserPublic`, only if it is still at that version."""
        self.send(self.calls.delete_user(user, if_match))

    def list_changes(
        self, *, cursor: str | None = None, limit: int | None = None, wait: float | None = None
    ) -> ChangePage:
        """One page of the change feed after `cursor` (from the oldest change kept
        without one); with `wait`, an empty page waits up to that many seconds."""
        return self.send(self.calls.list_changes(cursor, limit, wait))

    def iter_changes(
        self, cursor: str | None = None, *, limit: int | None = None
    ) -> Iterator[ChangePage]:
        """The pages of changes after `cursor`, until none is left (see `follow`).

        Handle a page's `items`, then save its `next_cursor`: resuming from the
        saved cursor sees every later change exactly once, in commit order.
        """
        while True:
            page = self.list_changes(cursor=cursor, limit=limit)
            if not page.items:
                return
            yield page
            cursor = page.next_cursor

    def follow(
        self, cursor: str | None = None, *, limit: int | None = None, wait: float = 30.0
    ) -> Iterator[ChangePage]:
        """Like `iter_changes`, forever: once caught up, long-polls (`wait` seconds
        per request) and yields each page of new changes as soon as it commits."""
        while True:
            page = self.list_changes(cursor=cursor, limit=limit, wait=wait)
            cursor = page.next_cursor
            if page.items:
                yield page

    def user_history(
        self, user: UserRef, *, limit: int | None = None, cursor: str | None = None
    ) -> HistoryPage:
        """The user's changes, newest first; pass `next_cursor` for older ones."""
        return self.send(self.calls.user_history(user, limit, cursor))

    def health(self) -> dict[str, str]:
        return self.send(self.calls.health())

    def readiness(self) -> dict[str, str]:
        """The /readyz body, ready or not: `{"status": "ready" | "unavailable", ...}`."""
        return self.send(self.calls.readiness())


class AsyncUsersClient(_ClientBase):
    """The asynchronous client: the same methods as `UsersClient`, awaited.

    Use as an async context manager, or call `aclose()`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        idempotency_keys: bool = True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(api_key=api_key, retry=retry, idempotency_keys=idempotency_keys, rng=rng)
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send `call`, retrying as its policy allows, and read its final answer."""
        attempts = self._attempts(call)
        while True:
            attempts.made += 1
            try:
                response = await self._http.send(self._request(self._http, call))
            except httpx.TransportError as error:
                delay = attempts.delay_after_error(error)
                if delay is None:
                    raise
            else:
                delay = attempts.delay_after_answer(response)
                if delay is None:
                    return call.read(response, attempts.outcome_unknown)
            await self._sleep(delay)

    async def create_user(
        self, *, idempotency_key: str | None = None, **fields: Unpack[NewUser]
    ) -> UserPublic:
        """POST /users with the user's fields as keyword arguments."""
        return await self.send(self.calls.create_user(fields, idempotency_key))

    async def create_users(
        self,
        users: Sequence[NewUser | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[UserPublic]:
        """Create 1-1000 users, all or none, in the order given."""
        return await self.send(self.calls.create_users(users, idempotency_key))

    async def get_user(self, user: UserRef) -> UserPublic:
        return await self.send(self.calls.get_user(user))

    async def list_users(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        include_total: bool = False,
        **filters: Unpack[UserFilters],
    ) -> UserPage:
        """One page; pass its `next_cursor` (with the same filters) for the next."""
        return await self.send(self.calls.list_users(limit, cursor, include_total, filters))

    async def iter_users(
        self, *, limit: int | None = None, **filters: Unpack[UserFilters]
    ) -> AsyncIterator[UserPublic]:
        """Every user that matches, page after page (`limit` users per request)."""
        cursor = None
        while True:
            page = await self.list_users(limit=limit, cursor=cursor, **filters)
            for user in page.items:
                yield user
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def replace_user(
        self, user: UserRef, *, if_match: str | int | None = None, **fields: Unpack[NewUser]
    ) -> UserPublic:
        """PUT every field. Given a `UserPublic`, only if it is still at that version
        (else VersionMismatch)."""
        return await self.send(self.calls.replace_user(user, fields, if_match))

    async def update_user(
        self, user: UserRef, *, if_match: str | int | None = None, **changes: Unpack[UserChanges]
    ) -> UserPublic:
        """PATCH the fields given. Given a `UserPublic`, only if it is still at that version."""
        return await self.send(self.calls.update_user(user, changes, if_match))

    async def delete_user(self, user: UserRef, *, if_match: str | int | None = None) -> None:
        """DELETE. Given a `UserPublic`, only if it is still at that version."""
        await self.send(self.calls.delete_user(user, if_match))

    async def list_changes(
        self, *, cursor: str | None = None, limit: int | None = None, wait: float | None = None
    ) -> ChangePage:
        """One page of the change feed after `cursor` (from the oldest change kept
        without one); with `wait`, an empty page waits up to that many seconds."""
        return await self.send(self.calls.list_changes(cursor, limit, wait))

    async def iter_changes(
        self, cursor: str | None = None, *, limit: int | None = None
    ) -> AsyncIterator[ChangePage]:
        """The pages of changes after `cursor`, until none is left (see `follow`).

        Handle a page's `items`, then save its `next_cursor`: resuming from the
        saved cursor sees every later change exactly once, in commit order.
        """
        while True:
            page = await self.list_changes(cursor=cursor, limit=limit)
            if not page.items:
                return
            yield page
            cursor = page.next_cursor

    async def follow(
        self, cursor: str | None = None, *, limit: int | None = None, wait: float = 30.0
    ) -> AsyncIterator[ChangePage]:
        """Like `iter_changes`, forever: once caught up, long-polls (`wait` seconds
        per request) and yields each page of new changes as soon as it commits."""
        while True:
            page = await self.list_changes(cursor=cursor, limit=limit, wait=wait)
            cursor = page.next_cursor
            if page.items:
                yield page

    async def user_history(
        self, user: UserRef, *, limit: int | None = None, cursor: str | None = None
    ) -> HistoryPage:
        """The user's changes, newest first; pass `next_cursor` for older ones."""
        return await self.send(self.calls.user_history(user, limit, cursor))

    async def health(self) -> dict[str, str]:
        return await self.send(self.calls.health())

    async def readiness(self) -> dict[str, str]:
        """The /readyz body, ready or not: `{"status": "ready" | "unavailable", ...}`."""
        return await self.send(self.calls.readiness())
