"""Every error the service answers, as RFC 9457 problem details.

Code raises a `Problem` (made by the named constructors below, or by
auth.py and idempotency.py for their cases); FastAPI's own errors (unknown
route, wrong method, invalid request) and database outages are turned into
the same shape by `error_response`, which the handlers installed by
`install_error_handlers` and the idempotent route both use. Nothing here
ever copies an exception's text, SQL or a driver's message into an answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from users_service.database import DatabaseUnavailable, StatementTimeout
from users_service.db import is_statement_timeout, is_unavailable
from users_service.jsonio import JSONResponse
from users_service.request_context import current_request_id

logger = logging.getLogger("users_service.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 5
STATEMENT_TIMEOUT_DETAIL = "The database took too long to answer; try again shortly"


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ProblemDetails(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable, machine-readable name of the case.")
    request_id: str
    errors: list[ErrorDetail] | None = Field(
        default=None,
        description="Where the request went wrong, one entry per input "
        "(422, and 409 for a taken email).",
    )


class Problem(Exception):
    """An answer other than success: status, stable code and a human detail."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})


def user_not_found() -> Problem:
    return Problem(404, "user_not_found", "User not found")


def email_taken(loc: Sequence[str | int] = ("body", "email")) -> Problem:
    return Problem(
        409,
        "email_taken",
        "A user with this email already exists",
        errors=[{"loc": list(loc), "msg": "email is already taken", "type": "email_taken"}],
    )


def version_mismatch() -> Problem:
    return Problem(412, "version_mismatch", "The user has changed since the version in If-Match")


def validation_failed(
    errors: Iterable[Mapping[str, Any]], detail: str = "The request is not valid"
) -> Problem:
    return Problem(422, "validation_failed", detail, errors=list(errors))


def payload_too_large(limit: int) -> Problem:
    return Problem(413, "payload_too_large", f"The request body is larger than {limit} bytes")


def unsupported_media_type(allowed: Sequence[str]) -> Problem:
    return Problem(
        415,
        "unsupported_media_type",
        "The request body must be sent as " + " or ".join(allowed),
    )


def service_unavailable(detail: str = "The database is unavailable; try again shortly") -> Problem:
    return Problem(
        503,
        "service_unavailable",
        detail,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def internal_error() -> Problem:
    return Problem(
        500,
        "internal_error",
        "The service failed to answer; the request id identifies the failure in its logs",
    )


def problem_response(problem: Problem) -> JSONResponse:
    request_id = current_request_id()
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _title(problem.status),
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
        "request_id": request_id,
    }
    if problem.errors is not None:
        body["errors"] = [
            {"loc": list(e["loc"]), "msg": str(e["msg"]), "type": str(e["type"])}
            for e in problem.errors
        ]
    return JSONResponse(
        body,
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_HTTP_CODES = {
    401: ("unauthorized", "A valid API key is required"),
    403: ("forbidden", "This API key may not do this"),
    404: ("not_found", "No such resource"),
    405: ("method_not_allowed", "This method is not allowed on this resource"),
    413: ("payload_too_large", "The request body is too large"),
    415: ("unsupported_media_type", "This content type is not supported"),
}


def error_response(error: Exception) -> JSONResponse:
    """The problem answer for an error the service knows how to answer.

    Raises the error again when it is not one of those (the last-resort
    middleware answers it with a 500).
    """
    if isinstance(error, Problem):
        return problem_response(error)
    if isinstance(error, RequestValidationError):
        return problem_response(validation_failed(_clean_errors(error.errors())))
    if isinstance(error, StarletteHTTPException):
        if error.status_code == 400:  # FastAPI could not read the body
            detail = "The request body could not be read"
            return problem_response(
                validation_failed([{"loc": ["body"], "msg": detail, "type": "invalid"}], detail)
            )
        code, detail = _HTTP_CODES.get(error.status_code, ("http_error", _title(error.status_code)))
        return problem_response(Problem(error.status_code, code, detail, headers=error.headers))
    if isinstance(error, StatementTimeout) or (
        isinstance(error, sa_exc.SQLAlchemyError) and is_statement_timeout(error)
    ):
        logger.warning("database statement cancelled by DB_STATEMENT_TIMEOUT_MS")
        return problem_response(service_unavailable(STATEMENT_TIMEOUT_DETAIL))
    if isinstance(error, DatabaseUnavailable) or (
        isinstance(error, sa_exc.SQLAlchemyError) and is_unavailable(error)
    ):
        logger.warning("database unavailable: %s", type(error).__name__)
        return problem_response(service_unavailable())
    raise error


def _clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
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
    if isinstance(error, StarletteHTTPException) and error.status_code == 405:
        # Starlette's 405 names only the methods of the first route at the
        # path; each method of /users/{user_id} is a route of its own.
        allow = allowed_methods(request)
        if allow is not None:
            error = StarletteHTTPException(405, headers={"Allow": allow})
    return error_response(error)


def install_error_handlers(app: FastAPI) -> None:
    for error_class in (
        Problem,
        StarletteHTTPException,
        RequestValidationError,
        sa_exc.SQLAlchemyError,
        DatabaseUnavailable,
    ):
        app.add_exception_handler(error_class, _on_error)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem answers an operation can give."""
    return {
        status: {
            "model": ProblemDetails,
            "description": _title(status),
            "content": {PROBLEM_CONTENT_TYPE: {}},
        }
        for status in statuses
    }
