"""The service's schemas as Python types. Generated from openapi.json
(version 0.1.0) by clients/python/generate.py (make openapi): do not edit."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal, Required, TypedDict

from pydantic import BaseModel

SortValue = Literal["created_at", "-created_at", "name", "-name", "email", "-email", "age", "-age"]


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


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ProblemDetails(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: ErrorCode
    request_id: str
    errors: list[ErrorDetail] | None = None
    error_count: int | None = None


class UserPublic(BaseModel):
    """A user as the API returns it."""

    name: str
    email: str
    age: int
    id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    version: int


class UserPage(BaseModel):
    items: list[UserPublic]
    next_cursor: str | None
    total: int | None = None


class UserBatchPublic(BaseModel):
    items: list[UserPublic]


class UserChangePublic(BaseModel):
    """One change, as the feed and the history show it."""

    seq: int
    action: Literal["created", "updated", "deleted"]
    user_id: uuid.UUID
    version: int
    at: datetime
    caller: str
    request_id: str
    changed: list[str]
    user: UserPublic | None


class ChangePage(BaseModel):
    items: list[UserChangePublic]
    next_cursor: str


class HistoryPage(BaseModel):
    items: list[UserChangePublic]
    next_cursor: str | None


class NewUser(TypedDict, total=False):
    """Fields of UserCreate: Body of POST /users: every field, nothing else."""

    name: Required[str]
    email: Required[str]
    age: Required[int]


class UserChanges(TypedDict, total=False):
    """Fields of UserUpdate: Body of PATCH /users/{id}: any of the fields; null is not a value."""

    name: str
    email: str
    age: int


class UserFilters(TypedDict, total=False):
    """The sort and filters of GET /users."""

    sort: SortValue
    email: str
    name: str
    min_age: int
    max_age: int
    created_after: datetime
    created_before: datetime
