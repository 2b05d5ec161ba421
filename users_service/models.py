"""The one place the user is defined: its fields, the table and the API's schemas.

A field is declared once, in `UserFields`. Everything else derives from it:

- `User`, the table (and, through `SQLModel.metadata`, what Alembic's
  autogenerate compares against: `make revision` after adding a field);
- `UserCreate` and `UserReplace` (every field), `UserUpdate` (any of them),
  `UserPublic` (what the API returns);
- the JSON each database renders and the Python-side record
  (`db/rendering.py`, from the table's columns and their types);
- seed rows, import/export columns, the OpenAPI document and, from it, the
  Python client's types (`make openapi`).

Adding an optional field is one line here, e.g.
`nickname: str | None = Field(default=None, max_length=50)`, then
`make revision m="add nickname"`.

Table models skip validation, so rows are only ever built from a validated
`UserCreate` / `UserReplace` / `UserUpdate`.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from pydantic import AfterValidator, ConfigDict, Strict, field_validator
from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.types import CHAR, TypeDecorator
from sqlmodel import Field, SQLModel

NAME_MAX_LENGTH = 200
EMAIL_MAX_LENGTH = 254
AGE_MIN = 0
AGE_MAX = 150

# Constraint and index names that are the same on every database, so that
# migrations can refer to them and errors can be recognised by them.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata

EMAIL_UNIQUE_INDEX = "uq_users_email"

# Indexes that exist only on PostgreSQL, made by hand in a migration (an
# expression index with an operator class that only PostgreSQL has);
# Alembic's autogenerate leaves them alone (see migrations/env.py).
NAME_TRIGRAM_INDEX = "ix_users_name_trgm"
POSTGRESQL_ONLY_INDEXES = frozenset({NAME_TRIGRAM_INDEX})

# Indexes that exist only on MariaDB/MySQL, made by hand in a migration
# (60c3f1d8a2b7); autogenerate leaves them alone too. (created_at, id,
# name): a name query of one or two characters tests the names of its
# window in this index and reads only the users that match
# (name_search.window_index; MariaDB reads each user of the window by its
# random id through ix_users_created_at_id otherwise).
NAME_WINDOW_INDEX = "ix_users_created_at_id_name"
# The same for the age and email orders (migration b5d2e8f4c1a9): a name
# query in either order tests the names in the index it walks.
AGE_NAME_INDEX = "ix_users_age_id_name"
EMAIL_NAME_INDEX = "ix_users_email_id_name"
MARIADB_ONLY_INDEXES = frozenset({NAME_WINDOW_INDEX, AGE_NAME_INDEX, EMAIL_NAME_INDEX})

# The name substring index of SQLite (an FTS5 table, and the tables FTS5
# keeps for it) and of MariaDB/MySQL (a trigram side table): made by hand in
# a migration, kept in step by triggers on users, queried by
# db/name_search.py; Alembic's autogenerate leaves them alone.
NAME_SEARCH_TABLES = frozenset(
    {
        "users_name_fts",
        *(f"users_name_fts_{shadow}" for shadow in ("data", "idx", "docsize", "config")),
        "user_name_trigrams",
    }
)

# Microsecond timestamps everywhere: MySQL/MariaDB's DATETIME drops the
# fraction unless asked for it, and keyset paging needs the exact value back.
# SQLite keeps text: in the API's own form ('2026-11-30T18:19:51.123456Z',
# which sorts as the times do), so a read hands it over as it is. (SQLite's
# DATETIME is not annotated in SQLAlchemy, hence the ignore.)
_SQLITE_TIMESTAMP = sqlite.DATETIME(  # type: ignore[no-untyped-call]
    timezone=True,
    storage_format=(
        "%(year)04d-%(month)02d-%(day)02dT%(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06dZ"
    ),
    regexp=r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})Z",
)
Timestamp = (
    DateTime(timezone=True)
    .with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    .with_variant(_SQLITE_TIMESTAMP, "sqlite")
)

# Every table on MariaDB/MySQL: utf8mb4 with a binary collation. (SQLAlchemy
# reads mariadb_* options for mariadb:// URLs, mysql_* for mysql:// ones.)
MYSQL_TABLE_OPTIONS = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mariadb_charset": "utf8mb4",
    "mariadb_collate": "utf8mb4_bin",
}


class DashedUuid(TypeDecorator[uuid.UUID]):
    """A UUID stored as its 36-character text, the form the API shows."""

    impl = CHAR(36)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None:
            return None
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(value))

    def process_result_value(self, value: Any, dialect: Any) -> uuid.UUID | None:
        return None if value is None else uuid.UUID(value)


# Native UUID on PostgreSQL; CHAR(32) hex on MariaDB/MySQL, so that ids sort
# in the same order everywhere: MariaDB's native UUID type compares the last
# groups first. SQLite: the dashed text (it sorts as the hex does), so that
# a page's JSON takes the id and the timestamps as stored. Measured at
# 100,000 users, GET /users?limit=50: the page statement 117 -> 63 µs, the
# request in process 297-300 -> 217-262 µs, under wrk 2,320-2,561 -> 2,704-3,165
# requests/s (docs/performance.md, "Stored as the API shows them").
UserIdType = (
    Uuid()
    .with_variant(Uuid(native_uuid=False), "mysql", "mariadb")
    .with_variant(DashedUuid(), "sqlite")
)

# A stored answer can be a batch of 1000 users: more than MySQL's 64 KiB BLOB.
AnswerBody = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


# Unicode's control characters (category Cc) and lone surrogates (Cs):
# exactly these ranges (tests/unit/test_models.py checks every code point).
_FORBIDDEN_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def has_forbidden_characters(value: str) -> bool:
    return _FORBIDDEN_CHARACTERS.search(value) is not None


def check_name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("name must not be empty")
    if len(value) > NAME_MAX_LENGTH:
        raise ValueError(f"name must be at most {NAME_MAX_LENGTH} characters")
    if has_forbidden_characters(value):
        raise ValueError("name must not contain control characters or lone surrogates")
    return value


# A plain ASCII address: a dot-atom of letters, digits and `_+-` (at most 64
# characters), then host labels of letters, digits and single hyphens, and a
# top-level domain of letters. email-validator accepts every such address that
# is not a special-use name, and returns it as it is but for case.
# Taking them straight saves its full check: measured here, 45-80 µs of a
# create's 300 (1.2 µs this way). tests/unit/test_models.py compares both on
# random addresses; anything else still goes through email-validator.
_PLAIN_ADDRESS = re.compile(
    r"(?=[^@]{1,64}@)[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
    r"@((?:[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\.)+[A-Za-z]+)"
)
_SPECIAL_USE_SUFFIXES = tuple(f".{name}" for name in SPECIAL_USE_DOMAIN_NAMES)


def is_plain_address(value: str) -> bool:
    """Whether `value` is a plain ASCII address (see _PLAIN_ADDRESS) that
    email-validator would accept unchanged but for case."""
    if len(value) > EMAIL_MAX_LENGTH:
        return False
    match = _PLAIN_ADDRESS.fullmatch(value)
    if match is None:
        return False
    domain = "." + match[1].lower()
    return (
        # RFC 1035's 63 characters per label; no "--" anywhere (RFC 5890's
        # reserved "ab--" labels; "xn--" Punycode needs its full check).
        all(len(label) <= 63 for label in domain.split("."))
        and "--" not in domain
        and not domain.endswith(_SPECIAL_USE_SUFFIXES)
    )


def normalize_email(value: str) -> str:
    """email-validator's syntax check and normalization, then lower case."""
    if is_plain_address(value):
        return value.lower()
    if has_forbidden_characters(value):
        raise ValueError("email must not contain control characters or lone surrogates")
    if len(value) > 4 * EMAIL_MAX_LENGTH:
        raise ValueError(f"email must be at most {EMAIL_MAX_LENGTH} characters")
    try:
        checked = validate_email(value, check_deliverability=False, allow_display_name=False)
    except EmailNotValidError as exc:
        raise ValueError(f"email is not valid: {exc}") from None
    normalized = checked.normalized.lower()
    if len(normalized) > EMAIL_MAX_LENGTH:
        raise ValueError(f"email must be at most {EMAIL_MAX_LENGTH} characters")
    return normalized


# The JSON schema shows the limits of the stored value; validation applies
# them after trimming (name) and normalization (email).
Name = Annotated[
    str,
    Strict(),
    AfterValidator(check_name),
    Field(
        sa_type=String(NAME_MAX_LENGTH),
        schema_extra={"json_schema_extra": {"minLength": 1, "maxLength": NAME_MAX_LENGTH}},
    ),
]
Email = Annotated[
    str,
    Strict(),
    AfterValidator(normalize_email),
    Field(
        sa_type=String(EMAIL_MAX_LENGTH),
        schema_extra={"json_schema_extra": {"format": "email", "maxLength": EMAIL_MAX_LENGTH}},
    ),
]
Age = Annotated[int, Strict(), Field(ge=AGE_MIN, le=AGE_MAX, sa_type=SmallInteger)]


class UserFields(SQLModel):
    """The fields a caller writes: declare a new field here, and only here."""

    name: Name
    email: Email
    age: Age


class UserServerFields(SQLModel):
    """The fields the service sets."""

    id: uuid.UUID = Field(primary_key=True, sa_type=UserIdType)
    created_at: datetime = Field(sa_type=Timestamp)
    updated_at: datetime = Field(sa_type=Timestamp)
    version: int


class User(UserServerFields, UserFields, table=True):
    __tablename__ = "users"
    __table_args__: Any = (
        # One B-tree per sort the API offers, with id for keyset paging
        # (email is unique, so its own index orders it totally). Filters on
        # email, age and created_at use the same indexes; PostgreSQL also
        # gets a trigram index for name substrings (POSTGRESQL_ONLY_INDEXES).
        Index(EMAIL_UNIQUE_INDEX, "email", unique=True),
        Index("ix_users_created_at_id", "created_at", "id"),
        Index("ix_users_name_id", "name", "id"),
        Index("ix_users_age_id", "age", "id"),
        # Binary collation: emails are already lower-cased by us, and a
        # case- or accent-insensitive collation would make "é@x.io" and
        # "e@x.io" collide.
        MYSQL_TABLE_OPTIONS,
    )


users: Table = User.__table__  # type: ignore[attr-defined]


class IdempotencyKey(SQLModel, table=True):
    """An Idempotency-Key and the answer its first request got (see idempotency.py)."""

    __tablename__ = "idempotency_keys"
    __table_args__: Any = (
        Index("ix_idempotency_keys_created_at", "created_at"),
        MYSQL_TABLE_OPTIONS,
    )

    caller: str = Field(primary_key=True, sa_type=String(100))
    endpoint: str = Field(primary_key=True, sa_type=String(50))
    key: str = Field(primary_key=True, sa_type=String(255))
    request_hash: str = Field(sa_type=String(64))
    created_at: datetime = Field(sa_type=Timestamp)
    # NULL while the first request is still running.
    status: int | None = Field(default=None, sa_type=SmallInteger)
    headers: str | None = Field(default=None, sa_type=Text)
    body: bytes | None = Field(default=None, sa_type=AnswerBody)


idempotency_keys: Table = IdempotencyKey.__table__  # type: ignore[attr-defined]


class IdempotencyKeyUser(SQLModel, table=True):
    """A user a stored answer shows: a delete finds the answers to erase
    through these rows (by user_id, the primary key's first column) instead
    of reading every answer. Written with the answer, in its transaction;
    deleted with their key (ON DELETE CASCADE: the sweep, a release, an
    erasure). See idempotency.py."""

    __tablename__ = "idempotency_key_users"
    __table_args__: Any = (
        ForeignKeyConstraint(
            ["caller", "endpoint", "key"],
            [idempotency_keys.c.caller, idempotency_keys.c.endpoint, idempotency_keys.c.key],
            ondelete="CASCADE",
        ),
        # The cascade's (and a restarted key's) look-up by key.
        Index("ix_idempotency_key_users_caller_endpoint_key", "caller", "endpoint", "key"),
        # SQLite: the primary key is the table (no rowid B-tree besides it).
        {**MYSQL_TABLE_OPTIONS, "sqlite_with_rowid": False},
    )

    user_id: uuid.UUID = Field(primary_key=True, sa_type=UserIdType)
    caller: str = Field(primary_key=True, sa_type=String(100))
    endpoint: str = Field(primary_key=True, sa_type=String(50))
    key: str = Field(primary_key=True, sa_type=String(255))


idempotency_key_users: Table = IdempotencyKeyUser.__table__  # type: ignore[attr-defined]


# SQLite makes only an INTEGER PRIMARY KEY the rowid (and AUTOINCREMENT).
ChangeSeq = BigInteger().with_variant(Integer, "sqlite")
# The user's JSON after a change: at most a few KiB, but MariaDB's TEXT is 64 KiB.
ChangePayload = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


class UserChange(SQLModel, table=True):
    """One change to one user, written in the transaction that made it (changes.py).

    `seq` grows in commit order (changes.py says how, per database);
    `user` is the user's JSON after the change, NULL for a delete and, once
    the user is deleted, for every earlier change of theirs (erasure).
    """

    __tablename__ = "user_changes"
    __table_args__: Any = (
        Index("ix_user_changes_user_id_seq", "user_id", "seq"),
        # Never reuse a seq, even once retention deleted the newest change.
        {**MYSQL_TABLE_OPTIONS, "sqlite_autoincrement": True},
    )

    seq: int | None = Field(
        default=None, primary_key=True, sa_type=ChangeSeq, sa_column_kwargs={"autoincrement": True}
    )
    action: str = Field(sa_type=String(10))
    user_id: uuid.UUID = Field(sa_type=UserIdType)
    version: int
    at: datetime = Field(sa_type=Timestamp)
    caller: str = Field(sa_type=String(100))
    request_id: str = Field(sa_type=String(128))
    changed: str = Field(sa_type=String(1000))  # JSON array of field names
    user: str | None = Field(default=None, sa_type=ChangePayload)


user_changes: Table = UserChange.__table__  # type: ignore[attr-defined]


class ChangePosition(SQLModel, table=True):
    """Named positions in the change log: `pruned` (every change up to it was
    deleted by retention; on MariaDB its row is also the lock that orders
    appends) and each relay's last acknowledged change."""

    __tablename__ = "change_positions"
    __table_args__: Any = (MYSQL_TABLE_OPTIONS,)

    name: str = Field(primary_key=True, sa_type=String(100))
    seq: int = Field(sa_type=BigInteger)


change_positions: Table = ChangePosition.__table__  # type: ignore[attr-defined]
PRUNED_POSITION = "pruned"

# --- derived from the fields -------------------------------------------------------------

# The editable fields, in declaration order; those a create must give.
EDITABLE_FIELDS: tuple[str, ...] = tuple(UserFields.model_fields)
REQUIRED_FIELDS: tuple[str, ...] = tuple(
    name for name, field in UserFields.model_fields.items() if field.is_required()
)
# What a create leaves out gets its field's default.
FIELD_DEFAULTS: dict[str, Any] = {
    name: field.default
    for name, field in UserFields.model_fields.items()
    if not field.is_required()
}
# A user as the API shows it: the id first, then the model's order.
PUBLIC_FIELDS: tuple[str, ...] = (
    "id",
    *(column.name for column in users.columns if column.name != "id"),
)

_STRICT_BODY = ConfigDict(extra="forbid", strict=True)


class UserCreate(UserFields):
    """Body of POST /users: every field, nothing else."""

    model_config = _STRICT_BODY  # type: ignore[assignment]


class UserReplace(UserFields):
    """Body of PUT /users/{id}: every field, nothing else."""

    model_config = _STRICT_BODY  # type: ignore[assignment]


class _EveryFieldOptional(SQLModel):
    """A base that makes every field its subclass inherits optional: absent
    unless sent. A field whose type allows null may be sent as null (it is
    cleared); for the others null is not a value."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for field in cls.model_fields.values():
            if field.is_required():
                field.default = None
        cls.model_rebuild(force=True)


class UserUpdate(_EveryFieldOptional, UserFields):
    """Body of PATCH /users/{id}: any of the fields; null is not a value."""

    model_config = _STRICT_BODY  # type: ignore[assignment]


BATCH_MAX = 1000


class UserBatchCreate(SQLModel):
    """Body of POST /users/batch: 1-1000 users, all created or none."""

    model_config = _STRICT_BODY  # type: ignore[assignment]

    users: list[UserCreate] = Field(min_length=1, max_length=BATCH_MAX)


class UserPublic(UserServerFields, UserFields):
    """A user as the API returns it."""


class UserBatchPublic(SQLModel):
    items: list[UserPublic]


class UserPage(SQLModel):
    items: list[UserPublic]
    next_cursor: str | None
    total: int | None = Field(default=None, description="Present only with include_total=true.")


ChangeAction = Literal["created", "updated", "deleted"]


class UserChangePublic(SQLModel):
    """One change, as the feed and the history show it."""

    seq: int = Field(description="Grows with every change, in commit order.")
    action: ChangeAction
    user_id: uuid.UUID
    version: int = Field(description="The user's version after the change.")
    at: datetime
    caller: str = Field(description="Who made the change (the API key's caller name).")
    request_id: str = Field(description="The X-Request-ID of the request that made it.")
    changed: list[str] = Field(description="The names of the fields that changed.")
    user: UserPublic | None = Field(
        description="The user after the change; null for a delete, and in every change "
        "of a user since deleted."
    )


class ChangePage(SQLModel):
    items: list[UserChangePublic]
    next_cursor: str = Field(
        description="Always present: where the next request resumes, even after an empty page."
    )


class HistoryPage(SQLModel):
    items: list[UserChangePublic]
    next_cursor: str | None


CHANGES_LIMIT_MAX = 1000
CHANGES_WAIT_MAX = 30.0


class ChangeQuery(SQLModel):
    """Query parameters of GET /users/changes."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    cursor: str | None = Field(
        default=None,
        max_length=1024,
        description="The next_cursor of the previous answer; without it the feed starts at "
        "the oldest change kept.",
    )
    limit: int = Field(default=100, ge=1, le=CHANGES_LIMIT_MAX, description="Page size.")
    wait: float = Field(
        default=0,
        ge=0,
        le=CHANGES_WAIT_MAX,
        description="Seconds to wait for a change when there is none yet (long poll).",
    )


class HistoryQuery(SQLModel):
    """Query parameters of GET /users/{id}/history."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    limit: int = Field(default=50, ge=1, le=500, description="Page size.")
    cursor: str | None = Field(
        default=None, max_length=1024, description="The next_cursor of the previous page."
    )


# What an ISO 8601 date-time starts with (YYYY-MM-DD).
ISO_DATE_START = re.compile(r"\d{4}-\d{2}-\d{2}")

SortValue = Literal["created_at", "-created_at", "name", "-name", "email", "-email", "age", "-age"]
FILTERS = ("email", "name", "min_age", "max_age", "created_after", "created_before")


class UserListQuery(SQLModel):
    """Query parameters of GET /users. Unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    limit: int = Field(default=50, ge=1, le=500, description="Page size.")
    cursor: str | None = Field(
        default=None,
        max_length=1024,
        description="The next_cursor of the previous page, with the same sort and filters.",
    )
    sort: SortValue = Field(
        default="created_at",
        description="Sort field, '-' for descending; ties are broken by id.",
    )
    email: str | None = Field(
        default=None,
        max_length=4 * EMAIL_MAX_LENGTH,
        description="Exact email, case-insensitive.",
    )
    name: str | None = Field(
        default=None,
        max_length=NAME_MAX_LENGTH,
        description=(
            "Case-insensitive substring of the name; % and _ are plain characters. "
            "With one or two characters a page may hold fewer than limit users, "
            "even none, and still have a next_cursor."
        ),
    )
    min_age: int | None = Field(default=None, ge=AGE_MIN, le=AGE_MAX)
    max_age: int | None = Field(default=None, ge=AGE_MIN, le=AGE_MAX)
    created_after: datetime | None = Field(
        default=None, description="Exclusive; ISO 8601, UTC when no offset is given."
    )
    created_before: datetime | None = Field(
        default=None, description="Exclusive; ISO 8601, UTC when no offset is given."
    )
    include_total: bool = Field(default=False, description="Add how many users match the filters.")

    @field_validator("email")
    @classmethod
    def _normalize_email(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalize_email(value)
        except ValueError:
            if has_forbidden_characters(value):
                raise
            return value.strip().lower()  # not an address: matches no one

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)

    @field_validator("created_after", "created_before", mode="before")
    @classmethod
    def _iso_8601_only(cls, value: object) -> object:
        # pydantic would read "2026" or "0.5" as seconds since 1970.
        if isinstance(value, str) and not ISO_DATE_START.match(value):
            raise ValueError("must be an ISO 8601 date-time, e.g. 2026-11-27T15:49:01Z")
        return value

    @field_validator("created_after", "created_before")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+14:00 is in year 0 in UTC
            raise ValueError("must be from 0001-01-01 to 9999-12-31 in UTC") from None

    def filter_fingerprint(self) -> str:
        """The filters, as text: what a cursor is bound to besides the sort."""
        return "|".join(f"{name}={getattr(self, name)!r}" for name in FILTERS)
