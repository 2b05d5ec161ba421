"""The one place where errors become answers: RFC 9457 problem details.

Domain errors (errors.py) carry their `ErrorCode`; here each code gets its
HTTP status and any headers it needs. FastAPI's and Starlette's own errors
(unknown route, wrong method, invalid request) and the database's
(unavailable, statement timeout) are mapped to codes too. Nothing here ever
copies an exception's text, SQL or a driver's message into an answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from users_service.api.jsonio import JSONResponse
from users_service.db.errors import (
    DatabaseUnavailable,
    StatementTimeout,
    is_statement_timeout,
    is_unavailable,
)
from users_service.errors import (
    ErrorCode,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    ServiceError,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from users_service.request_context import current_request_id

logger = logging.getLogger("users_service.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
# The entries of `errors` an answer lists at most; `error_count` says how many
# there were. 8,310 unknown query parameters made a 747 KB answer before.
ERRORS_SHOWN = 20
RETRY_AFTER_SECONDS = 5
IDEMPOTENCY_QUOTA_RETRY_AFTER_SECONDS = 60
STATEMENT_TIMEOUT_DETAIL = "The database took too long to answer; try again shortly"

STATUS: dict[ErrorCode, int] = {
    ErrorCode.USER_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.EMAIL_TAKEN: 409,
    ErrorCode.IDEMPOTENCY_KEY_IN_USE: 409,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 422,
    ErrorCode.VERSION_MISMATCH: 412,
    ErrorCode.VALIDATION_FAILED: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.IDEMPOTENCY_QUOTA_EXCEEDED: 429,
    ErrorCode.CURSOR_EXPIRED: 410,
}
HEADERS: dict[ErrorCode, dict[str, str]] = {
    ErrorCode.UNAUTHORIZED: {"WWW-Authenticate": "Bearer"},
    ErrorCode.SERVICE_UNAVAILABLE: {"Retry-After": str(RETRY_AFTER_SECONDS)},
    ErrorCode.RATE_LIMITED: {"Retry-After": "1"},
    # Room comes back only as the caller's oldest keys expire: no point in
    # retrying at once (the client raises a Retry-After this long at once).
    ErrorCode.IDEMPOTENCY_QUOTA_EXCEEDED: {
        "Retry-After": str(IDEMPOTENCY_QUOTA_RETRY_AFTER_SECONDS)
    },
    # The first request with the key is still running (or its process died:
    # see IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS); ask again in a second.
    ErrorCode.IDEMPOTENCY_KEY_IN_USE: {"Retry-After": "1"},
}


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ProblemDetails(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: ErrorCode = Field(description="Stable, machine-readable name of the case.")
    request_id: str
    errors: list[ErrorDetail] | None = Field(
        default=None,
        description="Where the request went wrong, one entry per input "
        f"(422, and 409 for a taken email); the first {ERRORS_SHOWN} at most.",
    )
    error_count: int | None = Field(
        default=None, description="How many errors there were, when there is an errors list."
    )


def title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(error: ServiceError, request_id: str) -> dict[str, Any]:
    """The problem details of a domain error."""
    status = STATUS[error.code]
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title(status),
        "status": status,
        "detail": error.detail,
        "code": error.code.value,
        "request_id": request_id,
    }
    if error.errors is not None:
        body["errors"] = [
            {"loc": list(e["loc"]), "msg": str(e["msg"]), "type": str(e["type"])}
            for e in error.errors[:ERRORS_SHOWN]
        ]
        body["error_count"] = len(error.errors)
    return body


def problem_response(error: ServiceError, *, headers: dict[str, str] | None = None) -> JSONResponse:
    """The answer for a domain error."""
    status = STATUS[error.code]
    return JSONResponse(
        problem_body(error, current_request_id()),
        status_code=status,
        headers={**HEADERS.get(error.code, {}), **(headers or {})},
        media_type=PROBLEM_CONTENT_TYPE,
    )


_HTTP_ERRORS: dict[int, type[ServiceError]] = {
    401: Unauthorized,
    403: Forbidden,
    413: PayloadTooLarge,
}


def _from_http_exception(error: StarletteHTTPException) -> ServiceError:
    if error.status_code == 400:  # FastAPI could not read the body
        detail = "The request body could not be read"
        return ValidationFailed([{"loc": ["body"], "msg": detail, "type": "invalid"}], detail)
    if error.status_code == 404:
        return RouteNotFound()
    if error.status_code == 405:
        return MethodNotAllowed()
    if error.status_code == 415:
        return UnsupportedMediaType(["application/json"])
    return _HTTP_ERRORS.get(error.status_code, InternalError)()


def error_response(error: Exception, *, headers: dict[str, str] | None = None) -> JSONResponse:
    """The problem answer for an error the service knows how to answer.

    Raises the error again when it is not one of those (the last-resort
    middleware answers it with a 500).
    """
    if isinstance(error, ServiceError):
        return problem_response(error, headers=headers)
    if isinstance(error, RequestValidationError):
        return problem_response(ValidationFailed(clean_errors(error.errors())))
    if isinstance(error, StarletteHTTPException):
        return problem_response(_from_http_exception(error), headers=headers)
    if isinstance(error, StatementTimeout) or (
        isinstance(error, sa_exc.SQLAlchemyError) and is_statement_timeout(error)
    ):
        logger.warning("database statement cancelled by DB_STATEMENT_TIMEOUT_MS")
        return problem_response(ServiceUnavailable(STATEMENT_TIMEOUT_DETAIL))
    if isinstance(error, DatabaseUnavailable) or (
        isinstance(error, sa_exc.SQLAlchemyError) and is_unavailable(error)
    ):
        logger.warning("database unavailable: %s", type(error).__name__)
        return problem_response(ServiceUnavailable())
    raise error


def clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Keep where and what of each error; drop the input and internals."""
    cleaned = []
    for error in errors:
        loc = [part for part in error.get("loc", ()) if isinstance(part, (str, int))]
        msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        cleaned.append({"loc": loc, "msg": msg, "type": str(error.get("type", "invalid"))})
    return cleaned


_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


@lru_cache(maxsize=64)
def _template_pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)))


def allowed_methods(request: Request) -> str | None:
    """The methods the OpenAPI document lists for the request's path, for `Allow`.

    As in OpenAPI, a concrete path (`/users/batch`) wins over a template
    that also matches it (`/users/{user_id}`).
    """
    paths: dict[str, dict[str, Any]] = request.app.openapi()["paths"]
    path = request.url.path
    if path in paths:
        found = set(paths[path])
    else:
        found = set()
        for template, item in paths.items():
            if "{" in template and _template_pattern(template).fullmatch(path):
                found |= set(item)
    methods = {method.upper() for method in found & _METHODS}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods)) or None


async def _on_error(request: Request, error: Exception) -> JSONResponse:
    headers = None
    if isinstance(error, StarletteHTTPException) and error.status_code == 405:
        # Starlette's 405 names only the methods of the first route at the
        # path; each method of /users/{user_id} is a route of its own.
        allow = allowed_methods(request)
        if allow is not None:
            headers = {"Allow": allow}
    return error_response(error, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    for error_class in (
        ServiceError,
        StarletteHTTPException,
        RequestValidationError,
        sa_exc.SQLAlchemyError,
        DatabaseUnavailable,
    ):
        app.add_exception_handler(error_class, _on_error)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem answers an operation can give: the
    problem schema under application/problem+json, the type they are sent as
    (`document_problems` adds the schema to the document's components)."""
    return {
        status: {
            "description": title(status),
            "content": {
                PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
            },
        }
        for status in statuses
    }


def document_problems(document: dict[str, Any]) -> None:
    """Add ProblemDetails (and the schemas it uses) to an OpenAPI document."""
    _, top = models_json_schema(
        [(ProblemDetails, "serialization")], ref_template="#/components/schemas/{model}"
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(top["$defs"])
