"""The service's error vocabulary: one `ErrorCode` per case, and domain errors.

Domain code (crud, idempotency, the request readers) raises a `ServiceError`
subclass; it knows nothing of HTTP. `api/problems.py` is the one place that
turns them into RFC 9457 problem details (status, title, headers). The
Python client's exceptions are keyed by the same codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    """Stable, machine-readable names of the cases a caller may branch on."""

    USER_NOT_FOUND = "user_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    EMAIL_TAKEN = "email_taken"
    IDEMPOTENCY_KEY_IN_USE = "idempotency_key_in_use"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    VERSION_MISMATCH = "version_mismatch"
    VALIDATION_FAILED = "validation_failed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    SERVICE_UNAVAILABLE = "service_unavailable"
    INTERNAL_ERROR = "internal_error"
    RATE_LIMITED = "rate_limited"
    IDEMPOTENCY_QUOTA_EXCEEDED = "idempotency_quota_exceeded"
    CURSOR_EXPIRED = "cursor_expired"


FieldErrors = Sequence[Mapping[str, Any]]
"""`[{"loc": [...], "msg": "...", "type": "..."}]`: where the input went wrong."""


class ServiceError(Exception):
    """A case the service answers with a problem; `code` names it."""

    code: ClassVar[ErrorCode]
    message: ClassVar[str]  # the detail, unless one is given

    def __init__(self, detail: str | None = None, *, errors: FieldErrors | None = None) -> None:
        self.detail = detail or self.message
        self.errors = errors
        super().__init__(self.detail)


class UserNotFound(ServiceError):
    code = ErrorCode.USER_NOT_FOUND
    message = "User not found"


class RouteNotFound(ServiceError):
    code = ErrorCode.NOT_FOUND
    message = "No such resource"


class MethodNotAllowed(ServiceError):
    code = ErrorCode.METHOD_NOT_ALLOWED
    message = "This method is not allowed on this resource"


class EmailTaken(ServiceError):
    code = ErrorCode.EMAIL_TAKEN
    message = "A user with this email already exists"

    def __init__(self, loc: Sequence[str | int] = ("body", "email")) -> None:
        super().__init__(
            errors=[{"loc": list(loc), "msg": "email is already taken", "type": "email_taken"}]
        )


class VersionMismatch(ServiceError):
    code = ErrorCode.VERSION_MISMATCH
    message = "The user has changed since the version in If-Match"


class ValidationFailed(ServiceError):
    code = ErrorCode.VALIDATION_FAILED
    message = "The request is not valid"

    def __init__(self, errors: Iterable[Mapping[str, Any]], detail: str | None = None) -> None:
        super().__init__(detail, errors=list(errors))


class IdempotencyKeyInUse(ServiceError):
    code = ErrorCode.IDEMPOTENCY_KEY_IN_USE
    message = "A request with this Idempotency-Key is still in progress; retry shortly"


class IdempotencyKeyReused(ServiceError):
    code = ErrorCode.IDEMPOTENCY_KEY_REUSED
    message = "This Idempotency-Key was used with a different request body"

    def __init__(self, header: str) -> None:
        super().__init__(
            errors=[
                {
                    "loc": ["header", header],
                    "msg": "key already used with another body",
                    "type": "idempotency_key_reused",
                }
            ]
        )


class Unauthorized(ServiceError):
    code = ErrorCode.UNAUTHORIZED
    message = "A valid API key is required: Authorization: Bearer <key>"


class Forbidden(ServiceError):
    code = ErrorCode.FORBIDDEN
    message = "This API key may only read"


class PayloadTooLarge(ServiceError):
    code = ErrorCode.PAYLOAD_TOO_LARGE
    message = "The request body is too large"


class HeadersTooLarge(ServiceError):
    """Answered by the connection itself (api/connections.py), before any route."""

    code = ErrorCode.HEADERS_TOO_LARGE
    message = "The request's header section is too large"


class RequestTimeout(ServiceError):
    """Answered by the connection itself (api/connections.py), before any route."""

    code = ErrorCode.REQUEST_TIMEOUT
    message = "The request's header section did not arrive in time"


class UnsupportedMediaType(ServiceError):
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    message = "This content type is not supported"

    def __init__(self, accepted: Sequence[str]) -> None:
        super().__init__("The request body must be sent as " + " or ".join(accepted))


class ServiceUnavailable(ServiceError):
    code = ErrorCode.SERVICE_UNAVAILABLE
    message = "The database is unavailable; try again shortly"


class InternalError(ServiceError):
    code = ErrorCode.INTERNAL_ERROR
    message = "The service failed to answer; the request id identifies the failure in its logs"


class RateLimited(ServiceError):
    code = ErrorCode.RATE_LIMITED
    message = "Too many requests from this caller at once; retry shortly"


class IdempotencyQuotaExceeded(ServiceError):
    code = ErrorCode.IDEMPOTENCY_QUOTA_EXCEEDED
    message = (
        "This caller keeps as many Idempotency-Keys, or as many bytes of their answers, as it "
        "may; a new key is refused until older ones expire (24 hours after their first "
        "request). Retries of stored keys, and requests without a key, are still served"
    )


class CursorExpired(ServiceError):
    code = ErrorCode.CURSOR_EXPIRED
    message = (
        "Changes after this cursor are past retention (CHANGES_RETENTION_DAYS) and were "
        "deleted; start again without a cursor"
    )
