"""Every setting the service reads, in one typed object.

Values come from the process environment first, then from `.env` in the
working directory, then from the defaults below. A value that does not parse
stops start-up with a message that names the setting (see `load_settings`).
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from typing import Annotated, Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


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
    host: str = "127.0.0.1"
    port: Port = 8000

    # Connections per process. Every route that touches the database holds
    # one connection for its whole run, so the thread pool that runs those
    # routes is sized to the pool: a request never waits on a connection
    # while holding a thread (see users_service.db.configure_threadpool).
    db_pool_size: Annotated[int, Field(ge=1, le=1000)] = 20
    db_max_overflow: Annotated[int, Field(ge=0, le=1000)] = 0
    db_pool_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    db_connect_timeout_seconds: Annotated[int, Field(ge=1, le=300)] = 5

    sqlite_synchronous: SqliteSynchronous = SqliteSynchronous.FULL
    sqlite_busy_timeout_ms: Annotated[int, Field(ge=0, le=600_000)] = 10_000

    # Signs listing cursors so that a forged or altered one is refused.
    # Every replica of one deployment must share it.
    cursor_secret: SecretStr = SecretStr(DEVELOPMENT_CURSOR_SECRET)

    @model_validator(mode="after")
    def _check_production(self) -> Self:
        if (
            self.environment is Environment.production
            and self.cursor_secret.get_secret_value() == DEVELOPMENT_CURSOR_SECRET
        ):
            raise ValueError(
                "CURSOR_SECRET must be set to a private value when ENVIRONMENT=production"
            )
        return self

    @model_validator(mode="after")
    def _check_database_url(self) -> Self:
        self.sqlalchemy_url  # noqa: B018 - parses the URL, raising a clear error
        return self

    @cached_property
    def sqlalchemy_url(self) -> URL:
        """DATABASE_URL with the project's default driver filled in."""
        try:
            url = make_url(self.database_url)
        except (ArgumentError, ValueError) as exc:
            raise ValueError(f"DATABASE_URL is not a database URL: {exc}") from None
        family = url.drivername.split("+", 1)[0]
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

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.get_backend_name() == "sqlite"


class SettingsError(Exception):
    """A setting that does not parse; the message names it."""


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning pydantic's report into one plain message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper()
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {message}" if name else message)
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
