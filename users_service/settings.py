"""Every setting the service reads, in one typed object.

Values come from the process environment first, then from `.env` in the
working directory, then from the defaults below. A value that does not parse
stops start-up with a message that names the setting (see `load_settings`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from users_service.tracing import tracing_problems, tracing_requested


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class LogFormat(StrEnum):
    json = "json"
    text = "text"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class DbPooler(StrEnum):
    """What sits between the service and PostgreSQL."""

    none = "none"
    # A transaction-mode pooler (PgBouncer's pool_mode=transaction): each
    # transaction may run on another server connection.
    transaction = "transaction"


class SqliteSynchronous(StrEnum):
    NORMAL = "NORMAL"
    FULL = "FULL"
    EXTRA = "EXTRA"


# The driver each database family uses when the URL does not name one.
DEFAULT_DRIVERS = {
    "sqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}

DEVELOPMENT_CURSOR_SECRET = "development-only-cursor-secret"  # noqa: S105 - refused in production

Port = Annotated[int, Field(ge=1, le=65535)]

# The shortest API key ENVIRONMENT=production accepts: 16 characters of a
# random URL-safe key are 96 bits (`secrets.token_urlsafe(32)` gives 43).
MIN_PRODUCTION_KEY_LENGTH = 16


_CALLER = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


@dataclass(frozen=True)
class ApiKey:
    caller: str
    digest: bytes
    can_write: bool


def parse_api_keys(
    setting: str, *, can_write: bool, name: str, min_length: int = 1
) -> list[ApiKey]:
    """`caller:key,caller:key` → keys; a malformed entry, or a key shorter than
    `min_length`, raises ValueError naming `name` and the caller, never the key."""
    keys = []
    for number, entry in enumerate(filter(None, (e.strip() for e in setting.split(","))), 1):
        caller, separator, secret = entry.partition(":")
        if not separator or not _CALLER.fullmatch(caller) or not secret:
            raise ValueError(
                f"{name}: entry {number} must be caller:key, the caller 1-100 letters, "
                "digits, '_', '.' or '-'"
            )
        if len(secret) < min_length:
            raise ValueError(
                f"{name}: the key of caller {caller!r} is shorter than {min_length} "
                "characters, the least ENVIRONMENT=production accepts (make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        keys.append(ApiKey(caller, key_digest(secret), can_write))
    return keys


ANY_CALLER = "*"


@dataclass(frozen=True)
class RateLimit:
    """Up to `burst` requests at once, then one every 1/`per_second` s
    (in memory: api/ratelimit.py's LocalRates). In Redis, the `limits`
    library's moving window: `burst` requests in any window of
    `window_seconds`, on average at most `per_second` (exactly that when
    burst is a whole number of seconds' worth)."""

    per_second: float
    burst: int

    @property
    def window_seconds(self) -> int:
        # Whole seconds: the granularity of the `limits` library's windows.
        return max(1, math.ceil(self.burst / self.per_second - 1e-9))


def parse_rate_limits(setting: str) -> dict[str, RateLimit]:
    """`caller:rps[:burst],...,*:rps[:burst]` → {caller: RateLimit}; a
    malformed entry raises ValueError naming it by number."""
    limits: dict[str, RateLimit] = {}
    for number, entry in enumerate(filter(None, (e.strip() for e in setting.split(","))), 1):
        caller, *numbers = entry.split(":")
        problem = None
        if caller != ANY_CALLER and not _CALLER.fullmatch(caller):
            problem = "the caller must be 1-100 letters, digits, '_', '.' or '-', or *"
        elif caller in limits:
            problem = f"caller {caller!r} is listed twice"
        elif not 1 <= len(numbers) <= 2:
            problem = "it must be caller:requests_per_second[:burst]"
        else:
            try:
                per_second = float(numbers[0])
                burst = int(numbers[1]) if len(numbers) > 1 else max(1, math.ceil(per_second))
            except ValueError:
                per_second, burst = 0.0, 0
            if not (0 < per_second <= 1_000_000 and 0 < burst <= 1_000_000):
                problem = "requests_per_second must be a number over 0, burst a whole number over 0"
            else:
                limits[caller] = RateLimit(per_second, burst)
        if problem:
            raise ValueError(f"entry {number}: {problem}")
    return limits


def key_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    database_url: str = "sqlite:///./users.db"
    environment: Environment = Environment.development
    log_level: LogLevel = LogLevel.INFO
    # One line per request and per event: JSON for log collectors, or text
    # for people. Unset: JSON in production, text elsewhere.
    log_format: LogFormat | None = None
    host: str = "127.0.0.1"
    port: Port = 8000
    # Worker processes of `serve` (each with its own pool of DB_POOL_SIZE).
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed:
    # comma-separated addresses or networks, or * (any: only behind a proxy
    # that is the sole way in).
    forwarded_allow_ips: str = "127.0.0.1"

    # Connections per process to PostgreSQL / MariaDB (SQLite: two, plus
    # these for reads that may scan). A request holds one only while its
    # statements run; one waiting longer than DB_POOL_TIMEOUT_SECONDS
    # answers 503.
    db_pool_size: Annotated[int, Field(ge=1, le=1000)] = 20
    db_max_overflow: Annotated[int, Field(ge=0, le=1000)] = 0
    db_pool_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    db_connect_timeout_seconds: Annotated[int, Field(ge=1, le=300)] = 5
    # A pooled connection is closed once it is this old, or has been idle
    # this long (PostgreSQL and MariaDB): the server's memory is given back,
    # and a failover or a pooler's restart is picked up.
    db_connection_max_lifetime_seconds: Annotated[float, Field(gt=0, le=86_400)] = 3600.0
    db_connection_max_idle_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    # Longest a single statement may run on PostgreSQL / MariaDB before the
    # database cancels it, and a SQLite read that may scan before it is
    # interrupted (the request answers 503); 0 turns the limit off.
    db_statement_timeout_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 10_000
    # `transaction`: a transaction-mode pooler (PgBouncer) sits in front of
    # PostgreSQL, so nothing may outlive a transaction: no server-side
    # prepared statements, no startup options; the statement timeout and
    # the time zone are set in each transaction (db/postgresql.py).
    db_pooler: DbPooler = DbPooler.none
    # Reads that may scan many rows (a name substring, a count, a filter on
    # another column than the sort's) running at once per process, off the
    # event loop; more wait for a turn (up to DB_POOL_TIMEOUT_SECONDS, then 503).
    db_heavy_reads: Annotated[int, Field(ge=1, le=1000)] = 4
    # Connections of the pool that reads never take, so that writers never
    # wait behind readers (at most the pool's size less one).
    db_write_reserve: Annotated[int, Field(ge=1, le=1000)] = 4

    # Requests one caller may have in flight at once per process; beyond
    # that, 429 rate_limited. 0 turns the cap off.
    max_requests_in_flight_per_caller: Annotated[int, Field(ge=0, le=100_000)] = 100

    # Idempotency-Keys one caller may have stored (those of the last 24
    # hours), and bytes of their answers; past either, a request with a new
    # key is 429 idempotency_quota_exceeded. 0 turns a cap off.
    idempotency_max_keys_per_caller: Annotated[int, Field(ge=0, le=10**9)] = 1_000_000
    idempotency_max_bytes_per_caller: Annotated[int, Field(ge=0, le=1024**4)] = 1024**3
    # Largest answer kept for replay when the request wrote nothing (a 4xx);
    # a larger one is not kept, and a retry runs again. A success is always
    # kept (its size is bounded by the batch's size and MAX_BODY_BYTES).
    idempotency_max_error_answer_bytes: Annotated[int, Field(ge=0, le=1024**3)] = 16 * 1024
    # How often expired keys are deleted (in batches, off the event loop).
    idempotency_sweep_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    # A claimed Idempotency-Key whose request has not answered after this
    # long is taken over by a retry (its process likely died); if that
    # request does answer after all, its write is rolled back and it
    # answers 409 idempotency_key_in_use: one user per key either way.
    idempotency_in_flight_timeout_seconds: Annotated[float, Field(gt=0, le=86_400)] = 120.0

    # Per-caller rate limits (issue 14; api/ratelimit.py): comma-separated
    # `caller:requests_per_second[:burst]` pairs, `*` for every caller not
    # listed; empty: no rate limit. Shared by every process and replica
    # through RATE_LIMIT_STORAGE_URL (a Redis), else counted per process.
    # Keys in that Redis start with RATE_LIMIT_KEY_PREFIX (one per deployment).
    rate_limits: str = ""
    rate_limit_storage_url: SecretStr = SecretStr("")
    rate_limit_key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,100}$")] = (
        "users-service"
    )

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits_parse(cls, setting: str) -> str:
        parse_rate_limits(setting)
        return setting

    @field_validator("rate_limit_storage_url")
    @classmethod
    def _rate_limit_storage_is_redis(cls, setting: SecretStr) -> SecretStr:
        url = setting.get_secret_value()
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a Redis URL: redis://host:port/db, rediss:// or unix://")
        return setting

    @cached_property
    def rate_limit_table(self) -> dict[str, RateLimit]:
        """RATE_LIMITS, parsed (checked at start-up): caller (or `*`) → limit."""
        return parse_rate_limits(self.rate_limits)

    sqlite_synchronous: SqliteSynchronous = SqliteSynchronous.FULL
    sqlite_busy_timeout_ms: Annotated[int, Field(ge=0, le=600_000)] = 10_000

    # Signs listing cursors so that a forged or altered one is refused.
    # Every replica of one deployment must share it.
    cursor_secret: SecretStr = SecretStr(DEVELOPMENT_CURSOR_SECRET)

    # Who may call /users: comma-separated caller:key pairs (see auth.py).
    api_keys: SecretStr = SecretStr("")
    api_read_keys: SecretStr = SecretStr("")

    # Largest request body accepted, declared or streamed (413 beyond).
    max_body_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 1024 * 1024

    # The connections `serve` accepts (api/connections.py). A request's head
    # (request line and header fields) larger than MAX_HEADER_BYTES is
    # answered 431; one not complete HEADERS_TIMEOUT_SECONDS after its first
    # byte, 408; a connection with no request under way is closed after
    # KEEP_ALIVE_TIMEOUT_SECONDS, counted from the moment it opens too.
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024**2)] = 16 * 1024
    headers_timeout_seconds: Annotated[int, Field(ge=1, le=300)] = 10
    keep_alive_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 5

    # How long the change log keeps a change (GET /users/changes, the relay);
    # a cursor before what is kept is 410 cursor_expired.
    changes_retention_days: Annotated[float, Field(gt=0, le=3650)] = 7.0
    # The longest a long poll of GET /users/changes waits, whatever its
    # `wait` asks (e.g. below a proxy's idle timeout).
    changes_max_wait_seconds: Annotated[float, Field(ge=0, le=30)] = 30.0

    # `users-service relay`: the NATS server, the JetStream stream (made if
    # missing, with this duplicate window) and the subjects' prefix.
    relay_nats_url: str = "nats://127.0.0.1:4222"
    relay_stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,80}$")] = "USERS_CHANGES"
    relay_subject_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")] = (
        "users.changes"
    )
    relay_duplicate_window_seconds: Annotated[float, Field(ge=1, le=86_400)] = 600.0

    # On SIGTERM: how long requests in flight may run on before the process
    # exits without them (see users_service.__main__).
    shutdown_grace_seconds: Annotated[int, Field(ge=1, le=3600)] = 30
    # On SIGTERM: how long an idle keep-alive connection stays open (a
    # request on it is still answered, then it closes), so that a load
    # balancer never sends on a connection as it closes (api/connections.py).
    shutdown_idle_linger_seconds: Annotated[float, Field(ge=0, le=60)] = 3.0

    # --- Rotation: secrets from files (docs/operations.md#rotating-secrets).
    # Each secret setting may be read from a file instead, as container
    # platforms mount secrets (the file's trailing line breaks dropped).
    # Setting both a variable and its file is a start-up error.
    api_keys_file: Path | None = None
    api_read_keys_file: Path | None = None
    cursor_secret_file: Path | None = None
    database_url_file: Path | None = None
    # Tracing: the standard OTEL_* variables, which OpenTelemetry reads from
    # the process environment itself (users_service/tracing.py); off unless
    # they ask for it. Those this service cannot honour refuse start-up.

    @property
    def tracing_enabled(self) -> bool:
        return tracing_requested(os.environ)

    @model_validator(mode="wrap")
    @classmethod
    def _name_every_problem(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """A start-up refusal names every missing or invalid setting at once,
        not one per restart: the values that do not parse, and the settings
        that do not fit together."""
        data, problems = read_secret_files(data)
        try:
            settings: Self | None = handler(data)
        except ValidationError as error:
            settings = None
            problems += [_described(detail) for detail in error.errors()]
        raw = data if isinstance(data, dict) else {}

        def value(name: str, default: str = "") -> str:
            found = getattr(settings, name) if settings is not None else raw.get(name, default)
            if isinstance(found, SecretStr):
                return found.get_secret_value()
            return str(found.value if isinstance(found, StrEnum) else found)

        problems += tracing_problems(os.environ)
        problems += deployment_problems(
            environment=value("environment", Environment.development.value),
            cursor_secret=value("cursor_secret", DEVELOPMENT_CURSOR_SECRET),
            api_keys=value("api_keys"),
            api_read_keys=value("api_read_keys"),
            database_url=value("database_url", "sqlite:///./users.db"),
        )
        if problems:
            raise ValueError("; ".join(dict.fromkeys(problems)))
        assert settings is not None
        return settings

    @cached_property
    def api_key_list(self) -> list[ApiKey]:
        """API_KEYS and API_READ_KEYS, parsed (checked at start-up)."""
        return api_keys_of(
            self.api_keys.get_secret_value(),
            self.api_read_keys.get_secret_value(),
            production=self.environment is Environment.production,
        )

    @cached_property
    def cursor_secrets(self) -> list[str]:
        """CURSOR_SECRET's secrets: the first signs, every one verifies
        (none given: the built-in one, which only development accepts)."""
        return cursor_secrets_of(self.cursor_secret.get_secret_value()) or [
            DEVELOPMENT_CURSOR_SECRET
        ]

    @cached_property
    def sqlalchemy_url(self) -> URL:
        """DATABASE_URL with the project's default driver filled in."""
        return database_url_of(self.database_url)

    @property
    def effective_log_format(self) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return LogFormat.json if self.environment is Environment.production else LogFormat.text

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.get_backend_name() == "sqlite"


def api_keys_of(api_keys: str, api_read_keys: str, *, production: bool) -> list[ApiKey]:
    """API_KEYS and API_READ_KEYS, parsed; a malformed entry is refused by
    name, and so is a short key in production."""
    min_length = MIN_PRODUCTION_KEY_LENGTH if production else 1
    return [
        *parse_api_keys(api_keys, can_write=True, name="API_KEYS", min_length=min_length),
        *parse_api_keys(
            api_read_keys, can_write=False, name="API_READ_KEYS", min_length=min_length
        ),
    ]


def database_url_of(database_url: str) -> URL:
    """DATABASE_URL with the project's default driver filled in.

    No message here quotes the URL or the parser's own words: with an
    unencoded character in the password, they would show part of it.
    """
    try:
        url = make_url(_libpq_hosts_as_query(database_url))
    except (ArgumentError, ValueError):
        raise ValueError(
            "DATABASE_URL is not a database URL of the form "
            "dialect://user:password@host:port/database (percent-encode the user "
            "name's and password's special characters: %40 for '@')"
        ) from None
    family = url.drivername.split("+", 1)[0]
    if family != "sqlite" and database_url.count("@") > 1:
        # `user:p@ss@host` parses as host `ss@host`: part of the password
        # would turn up in every "could not connect" message.
        raise ValueError(
            "DATABASE_URL has more than one '@': write an '@' in the user name or password as %40"
        )
    if family not in DEFAULT_DRIVERS:
        raise ValueError(
            f"DATABASE_URL names an unsupported database {family!r}; "
            "use sqlite, postgresql, mysql or mariadb"
        )
    if "+" not in url.drivername:
        url = url.set(drivername=DEFAULT_DRIVERS[family])
    if family in ("mysql", "mariadb") and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


# The settings that may be read from a file: NAME from NAME_FILE.
SECRET_FILE_SETTINGS = ("api_keys", "api_read_keys", "cursor_secret", "database_url")


def read_secret_files(data: Any) -> tuple[Any, list[str]]:
    """The settings with each secret given as a file (`API_KEYS_FILE`, ...)
    read in, and what is wrong with those files. A file's trailing line
    breaks are dropped (`echo secret > file` writes one); the message about
    a file names the setting and the path, never what the file holds."""
    if not isinstance(data, dict):
        return data, []
    data = dict(data)
    problems = []
    for name in SECRET_FILE_SETTINGS:
        path = data.get(f"{name}_file")
        if path is None or str(path) == "":
            continue
        variable = name.upper()
        given = data.get(name)
        if isinstance(given, SecretStr):
            given = given.get_secret_value()
        if given is not None and given != "":
            problems.append(f"{variable} and {variable}_FILE are both set: set only one of them")
            continue
        try:
            text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as error:
            problems.append(f"{variable}_FILE: cannot read {path}: {error.strerror or error}")
            continue
        except UnicodeDecodeError:
            problems.append(f"{variable}_FILE: {path} is not UTF-8 text")
            continue
        if not text.strip():
            problems.append(f"{variable}_FILE: {path} is empty")
            continue
        data[name] = text
    return data, problems


def cursor_secrets_of(cursor_secret: str) -> list[str]:
    """`new,old`: comma-separated secrets, surrounding whitespace dropped."""
    return [secret for secret in (part.strip() for part in cursor_secret.split(",")) if secret]


_MULTI_HOST = re.compile(r"^(postgres(?:ql)?(?:\+\w+)?://)([^@/?#]*@)?([^/?#]*,[^/?#]*)(.*)$", re.S)


def _libpq_hosts_as_query(database_url: str) -> str:
    """libpq's multi-host form, `postgresql://u@h1:5432,h2:5432/db?...`, as
    SQLAlchemy spells it, `postgresql://u@/db?host=h1:5432&host=h2:5432&...`
    (its psycopg dialect hands libpq `host=h1,h2 port=5432,5432`, and libpq
    tries them in turn: with `target_session_attrs=read-write`, the primary)."""
    match = _MULTI_HOST.match(database_url)
    if match is None:
        return database_url
    scheme, credentials, hosts, rest = match.groups()
    path, _, query = rest.partition("?")
    listed = "&".join(f"host={host.strip()}" for host in hosts.split(","))
    if not all(host.strip() for host in hosts.split(",")):
        raise ValueError("an empty host in a list")
    return f"{scheme}{credentials or ''}{path or '/'}?{listed}{'&' if query else ''}{query}"


def deployment_problems(
    *, environment: str, cursor_secret: str, api_keys: str, api_read_keys: str, database_url: str
) -> list[str]:
    """What is wrong with these settings taken together (empty: nothing)."""
    problems = []
    for check in (
        lambda: database_url_of(database_url),
        lambda: api_keys_of(
            api_keys, api_read_keys, production=environment == Environment.production.value
        ),
    ):
        try:
            check()
        except ValueError as error:
            problems.append(str(error))
    keys_set = bool(api_keys or api_read_keys)
    # An empty CURSOR_SECRET (or one of commas only) counts as unset.
    cursor_secrets = cursor_secrets_of(cursor_secret)
    if (not cursor_secrets or DEVELOPMENT_CURSOR_SECRET in cursor_secrets) and (
        environment != Environment.development.value or keys_set
    ):
        # The built-in secret is public: anyone could sign a cursor with it.
        problems.append(
            "CURSOR_SECRET must be set to a private value when ENVIRONMENT is not "
            "development or API keys are set: the built-in one is public"
        )
    if environment == Environment.production.value and not keys_set:
        problems.append(
            "API_KEYS or API_READ_KEYS must be set when ENVIRONMENT=production: "
            "the service will not serve users to anyone who asks"
        )
    return problems


def _described(detail: Any) -> str:
    """One of pydantic's errors as `NAME: message`."""
    name = "_".join(str(part) for part in detail["loc"]).upper()
    message = str(detail["msg"]).removeprefix("Value error, ")
    return f"{name}: {message}" if name else message


class SettingsError(Exception):
    """A setting that does not parse; the message names it."""


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into one plain message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = [_described(error) for error in exc.errors()]
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
