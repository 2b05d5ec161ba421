"""Keyset pagination: sort orders, the "after this row" condition, cursors.

A cursor carries the sort key of the last row of a page (the sorted field's
value and the id) and a fingerprint of the sort and filters it was made
with, signed with HMAC-SHA256. A cursor that was altered, made up, or sent
with another sort or other filters fails to verify and is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, or_, tuple_
from sqlalchemy.sql.elements import UnaryExpression

from users_service.db.rendering import as_utc
from users_service.models import has_forbidden_characters, users

SORT_FIELDS = ("created_at", "name", "email", "age")
SORT_VALUES = tuple(f"{prefix}{field}" for field in SORT_FIELDS for prefix in ("", "-"))
# Fields whose values never tie: they order rows totally on their own, and
# their unique index serves the order without the id.
UNIQUE_SORT_FIELDS = frozenset({"email"})


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class SortOrder:
    field: str
    descending: bool

    @classmethod
    def parse(cls, value: str) -> SortOrder:
        field = value.removeprefix("-")
        if field not in SORT_FIELDS:
            raise ValueError(f"sort must be one of {', '.join(SORT_VALUES)}")
        return cls(field=field, descending=value.startswith("-"))

    def __str__(self) -> str:
        return f"{'-' if self.descending else ''}{self.field}"

    def order_by(self) -> list[UnaryExpression[Any]]:
        columns = [users.c[self.field]]
        if self.field not in UNIQUE_SORT_FIELDS:
            columns.append(users.c.id)
        return [column.desc() if self.descending else column.asc() for column in columns]

    def _key_row(self, key: tuple[Any, Any]) -> ColumnElement[Any]:
        """`key` as a row value bound with its columns' types (SQLite stores
        ids and timestamps in forms of its own: models.DashedUuid,
        models.Timestamp, not what a Python value's own type would bind)."""
        return tuple_(*key, types=[users.c[self.field].type, users.c.id.type])

    def after(self, key: tuple[Any, Any], dialect: str) -> ColumnElement[bool]:
        """Rows that come after `key` in this order (ties broken by id)."""
        column, id_column = users.c[self.field], users.c.id
        value, last_id = key
        if self.field in UNIQUE_SORT_FIELDS:
            after: ColumnElement[bool] = column < value if self.descending else column > value
            return after
        if dialect in ("mysql", "mariadb"):
            # MariaDB plans expanded comparisons better than row values.
            if self.descending:
                return and_(column <= value, or_(column < value, id_column < last_id))
            return and_(column >= value, or_(column > value, id_column > last_id))
        if self.descending:
            return tuple_(column, id_column) < self._key_row(key)
        return tuple_(column, id_column) > self._key_row(key)

    def up_to(self, key: tuple[Any, Any], dialect: str) -> ColumnElement[bool]:
        """Rows that come before `key` in this order, or are its row."""
        column, id_column = users.c[self.field], users.c.id
        value, last_id = key
        if self.field in UNIQUE_SORT_FIELDS:
            up_to: ColumnElement[bool] = column >= value if self.descending else column <= value
            return up_to
        if dialect in ("mysql", "mariadb"):
            if self.descending:
                return and_(column >= value, or_(column > value, id_column >= last_id))
            return and_(column <= value, or_(column < value, id_column <= last_id))
        if self.descending:
            return tuple_(column, id_column) >= self._key_row(key)
        return tuple_(column, id_column) <= self._key_row(key)

    def key_of(self, user: dict[str, Any]) -> tuple[Any, uuid.UUID]:
        """The sort key of a user as the API shows it (a dict of its JSON)."""
        return user[self.field], uuid.UUID(user["id"])


def typed_key(user: dict[str, Any], order: SortOrder) -> tuple[Any, uuid.UUID]:
    """The sort key of a user's JSON (a dict) with the column types' values,
    as a decoded cursor holds them."""
    return _sort_key([user[order.field], user["id"]], order)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode exactly what _b64 makes: any other spelling is refused."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


class CursorCodec:
    """Signs and verifies cursors with the deployment's CURSOR_SECRET.

    Several secrets rotate without breaking a cursor in anyone's hands: the
    first signs, and a cursor signed with any of them verifies (put the new
    secret first, keep the old one after it until its cursors are stale).
    """

    def __init__(self, secrets: str | Sequence[str]) -> None:
        secrets = [secrets] if isinstance(secrets, str) else list(secrets)
        if not secrets:
            raise ValueError("a cursor codec needs at least one secret")
        self._keys = [
            hashlib.sha256(b"users-service cursor\0" + secret.encode()).digest()
            for secret in secrets
        ]

    def _sign(self, payload: bytes, context: str, key: bytes | None = None) -> bytes:
        message = payload + b"\0" + context.encode()
        return hmac.new(key or self._keys[0], message, hashlib.sha256).digest()[:16]

    def encode(self, order: SortOrder, context: str, key: tuple[Any, uuid.UUID]) -> str:
        value, last_id = key
        if isinstance(value, datetime):
            value = as_utc(value).isoformat()
        payload = orjson.dumps([value, str(last_id)])
        return f"{_b64(payload)}.{_b64(self._sign(payload, f'{order}|{context}'))}"

    def _verified(self, cursor: str, context: str, refusal: str) -> bytes:
        """The payload of a cursor signed for `context` (else InvalidCursor)."""
        try:
            payload_text, signature_text = cursor.split(".")
            payload, signature = _unb64(payload_text), _unb64(signature_text)
        except ValueError:
            raise InvalidCursor("cursor is malformed") from None
        if not any(
            hmac.compare_digest(signature, self._sign(payload, context, key)) for key in self._keys
        ):
            raise InvalidCursor(refusal)
        return payload

    def decode(self, cursor: str, order: SortOrder, context: str) -> tuple[Any, uuid.UUID]:
        payload = self._verified(
            cursor, f"{order}|{context}", "cursor is not valid for this sort and these filters"
        )
        try:
            return _sort_key(orjson.loads(payload), order)
        except (ValueError, TypeError, OverflowError):
            # Signed but not a key: made with a secret someone else knows.
            raise InvalidCursor("cursor is malformed") from None

    def encode_position(self, context: str, position: int) -> str:
        """A cursor that holds a position in a log (the change feed, a history)."""
        payload = orjson.dumps([position])
        return f"{_b64(payload)}.{_b64(self._sign(payload, f'position|{context}'))}"

    def decode_position(self, cursor: str, context: str) -> int:
        payload = self._verified(cursor, f"position|{context}", "cursor is not valid here")
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise InvalidCursor("cursor is malformed") from None
        if not (
            isinstance(value, list)
            and len(value) == 1
            and type(value[0]) is int
            and 0 <= value[0] < 2**63
        ):
            raise InvalidCursor("cursor is malformed")
        return int(value[0])


def _sort_key(payload: Any, order: SortOrder) -> tuple[Any, uuid.UUID]:
    """The (value, id) a cursor holds, each checked as its column's type."""
    if not (isinstance(payload, list) and len(payload) == 2):
        raise ValueError("a cursor holds [value, id]")
    value, last_id = payload
    if not isinstance(last_id, str):
        raise ValueError("id must be text")
    kind = users.c[order.field].type.python_type
    if kind is datetime:
        if not isinstance(value, str):
            raise ValueError("timestamp must be text")
        value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            raise ValueError("timestamp must have an offset")
        value = as_utc(value)
    elif kind is int:
        if type(value) is not int or not -(2**63) < value < 2**63:
            raise ValueError("value must be a 64-bit integer")
    elif not isinstance(value, kind) or (
        isinstance(value, str) and has_forbidden_characters(value)
    ):
        raise ValueError(f"value must be {kind.__name__} without control characters")
    return value, uuid.UUID(last_id)
