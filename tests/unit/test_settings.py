"""users_service.settings: where values come from, and how DATABASE_URL is completed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine

from users_service.db.engine import postgresql_connect_args, transaction_settings
from users_service.settings import (
    DEVELOPMENT_CURSOR_SECRET,
    MIN_PRODUCTION_KEY_LENGTH,
    Environment,
    LogLevel,
    Settings,
    SettingsError,
    load_settings,
)


@pytest.fixture(autouse=True)
def no_outside_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No setting from the test process's environment, and no `.env` in the working dir."""
    for name in list(os.environ):
        if name.lower() in Settings.model_fields:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_without_configuration_the_database_is_users_db_in_the_working_directory() -> None:
    settings = load_settings()

    assert settings.database_url == "sqlite:///./users.db"
    assert settings.sqlalchemy_url.drivername == "sqlite+pysqlite"
    assert settings.sqlalchemy_url.database == "./users.db"
    assert settings.is_sqlite


@pytest.mark.parametrize(
    ("database_url", "drivername"),
    [
        ("postgresql://u:p@db.example:5432/users", "postgresql+psycopg"),
        ("postgres://u:p@db.example:5432/users", "postgresql+psycopg"),
        ("sqlite:///./data/users.db", "sqlite+pysqlite"),
        ("sqlite:////var/lib/users.db", "sqlite+pysqlite"),
    ],
)
def test_url_without_driver_gets_the_default_driver(database_url: str, drivername: str) -> None:
    url = load_settings(database_url=database_url).sqlalchemy_url

    assert url.drivername == drivername
    assert "charset" not in url.query


@pytest.mark.parametrize(
    ("database_url", "drivername"),
    [
        ("mysql://u:p@db.example:3306/users", "mysql+pymysql"),
        ("mariadb://u:p@db.example:3306/users", "mariadb+pymysql"),
    ],
)
def test_mysql_family_url_gets_pymysql_and_utf8mb4(database_url: str, drivername: str) -> None:
    url = load_settings(database_url=database_url).sqlalchemy_url

    assert url.drivername == drivername
    assert url.query["charset"] == "utf8mb4"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "u",
        "p",
        "db.example",
        3306,
        "users",
    )
    assert not load_settings(database_url=database_url).is_sqlite


def test_explicit_driver_and_charset_are_kept() -> None:
    assert (
        load_settings(database_url="postgresql+psycopg2://u@h/db").sqlalchemy_url.drivername
        == "postgresql+psycopg2"
    )
    url = load_settings(database_url="mysql+mysqldb://u@h/db?charset=utf8mb3").sqlalchemy_url
    assert url.drivername == "mysql+mysqldb"
    assert url.query["charset"] == "utf8mb3"


def test_database_url_as_given_is_kept_for_alembic() -> None:
    settings = load_settings(database_url="postgresql://u:p@h/db")

    assert settings.database_url == "postgresql://u:p@h/db"


@pytest.mark.parametrize(
    "database_url",
    [
        "oracle://u:p@h/db",
        "mssql+pyodbc://u:p@h/db",
        "not a database url",
        "",
        "postgresql://u:p@h:notaport/db",
    ],
)
def test_unsupported_or_malformed_database_url_is_refused_naming_it(database_url: str) -> None:
    with pytest.raises(SettingsError, match=r"\bDATABASE_URL\b"):
        load_settings(database_url=database_url)


def test_environment_variable_overrides_dotenv(
    monkeypatch: pytest.MonkeyPatch, no_outside_configuration: Path
) -> None:
    (no_outside_configuration / ".env").write_text(
        "DATABASE_URL=postgresql://from-dotenv/db\nPORT=8001\nLOG_LEVEL=DEBUG\n"
    )
    monkeypatch.setenv("DATABASE_URL", "mariadb://from-env/db")
    monkeypatch.setenv("PORT", "9002")

    settings = load_settings()

    assert settings.database_url == "mariadb://from-env/db"
    assert settings.port == 9002
    assert settings.log_level is LogLevel.DEBUG


def test_dotenv_is_read_from_the_working_directory(no_outside_configuration: Path) -> None:
    (no_outside_configuration / ".env").write_text(
        "PORT=8123\nENVIRONMENT=test\nCURSOR_SECRET=from-the-dotenv-file\n"
    )

    settings = load_settings()

    assert settings.port == 8123
    assert settings.environment is Environment.test


def test_environment_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("db_pool_size", "7")

    assert load_settings().db_pool_size == 7


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "notaport"),
        ("PORT", "0"),
        ("PORT", "65536"),
        ("DB_POOL_SIZE", "0"),
        ("DB_MAX_OVERFLOW", "-1"),
        ("DB_POOL_TIMEOUT_SECONDS", "0"),
        ("SQLITE_SYNCHRONOUS", "OFF"),
        ("LOG_LEVEL", "LOUD"),
        ("ENVIRONMENT", "staging"),
        ("SHUTDOWN_GRACE_SECONDS", "0"),
        ("SHUTDOWN_GRACE_SECONDS", "2.5"),
    ],
)
def test_unparsable_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError, match=rf"(?<![A-Z_]){variable}\b"):
        load_settings()


def test_production_without_cursor_secret_is_refused_naming_it() -> None:
    with pytest.raises(SettingsError, match=r"\bCURSOR_SECRET\b"):
        load_settings(environment="production")


@pytest.mark.parametrize(
    "overrides",
    [
        {"environment": "test"},
        {"environment": "production", "api_keys": "billing:a-long-random-key"},
        {"environment": "development", "api_keys": "billing:a-long-random-key"},
        {"environment": "development", "api_read_keys": "crm:a-long-random-key"},
    ],
)
def test_the_public_built_in_cursor_secret_is_refused_outside_development_or_with_keys(
    overrides: dict[str, str],
) -> None:
    with pytest.raises(SettingsError, match=r"\bCURSOR_SECRET\b.*built-in one is public"):
        load_settings(**overrides)


def test_development_without_keys_may_use_the_built_in_cursor_secret() -> None:
    assert load_settings(environment="development").environment is Environment.development


def test_production_with_cursor_secret_and_api_keys_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CURSOR_SECRET", "a-private-value")
    monkeypatch.setenv("API_KEYS", "billing:a-long-random-key")

    settings = load_settings(environment="production")

    assert settings.environment is Environment.production
    assert settings.cursor_secret.get_secret_value() == "a-private-value"
    assert [key.caller for key in settings.api_key_list] == ["billing"]


def test_production_without_api_keys_is_refused_naming_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CURSOR_SECRET", "a-private-value")

    with pytest.raises(SettingsError, match="API_KEYS or API_READ_KEYS"):
        load_settings(environment="production")


@pytest.mark.parametrize("entry", ["nokey", "caller:", ":key", "bad caller:key"])
def test_malformed_api_key_entries_are_refused_naming_the_setting(entry: str) -> None:
    with pytest.raises(SettingsError, match="API_READ_KEYS"):
        load_settings(api_read_keys=entry)


@pytest.mark.parametrize(
    "database_url",
    ["oracle://u:hunter2secret@h/db", "postgresql://u:hunter2secret@h:notaport/db"],
)
def test_database_url_refusal_does_not_echo_the_password(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)

    with pytest.raises(SettingsError) as refused:
        load_settings()

    assert "hunter2secret" not in str(refused.value)


@pytest.mark.parametrize("variable", ["API_KEYS", "API_READ_KEYS"])
def test_production_refuses_a_short_key_naming_the_setting_and_caller_not_the_key(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv("CURSOR_SECRET", "a-private-value")
    monkeypatch.setenv(variable, f"billing:{'k' * 20},w:{'s' * (MIN_PRODUCTION_KEY_LENGTH - 1)}")

    with pytest.raises(SettingsError) as refused:
        load_settings(environment="production")

    message = str(refused.value)
    assert re.search(rf"(?<![A-Z_]){variable}\b", message)
    assert "'w'" in message and str(MIN_PRODUCTION_KEY_LENGTH) in message
    assert "sss" not in message and "billing" not in message


def test_short_keys_are_refused_only_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", "w:1")
    monkeypatch.setenv("CURSOR_SECRET", "a-private-value")

    assert [key.caller for key in load_settings(environment="test").api_key_list] == ["w"]
    monkeypatch.setenv("API_KEYS", f"w:{'1' * MIN_PRODUCTION_KEY_LENGTH}")
    assert [key.caller for key in load_settings(environment="production").api_key_list] == ["w"]


PASSWORD = "hunter2@tail"  # what must never be shown


@pytest.mark.parametrize(
    "database_url",
    [
        "postgresql://u:hunter2@tail@db.example:5432/users",  # host "tail@db.example"
        "postgresql://u:hunter2@tail@db.example/users",
        "postgresql://u:hunter2@tail:9@db.example/users",  # port "9@db.example"
        "postgresql://u:hunter2@tail/x@db.example/users",  # database "x@db.example/users"
        "postgresql://u:hunter2@tail?x@db.example/users",  # host "tail", a query
        "mariadb://u:hunter2@tail@db.example:3306/users",
        "postgresql://u:hunter2@tail@[::1]/users",
    ],
)
def test_an_unencoded_at_in_the_password_is_refused_without_showing_any_of_it(
    database_url: str,
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(database_url=database_url)

    message = str(refused.value)
    assert "DATABASE_URL" in message and "%40" in message
    assert "hunter" not in message and "tail" not in message


def test_an_encoded_at_in_the_password_is_the_password() -> None:
    url = load_settings(
        database_url="postgresql://u:hunter2%40tail@db.example/users"
    ).sqlalchemy_url

    assert (url.password, url.host, url.database) == (PASSWORD, "db.example", "users")
    assert PASSWORD not in repr(url) and "hunter2" not in str(url)


def test_connection_limits_default_to_16_kib_10_s_and_5_s() -> None:
    settings = load_settings()

    assert settings.max_header_bytes == 16 * 1024
    assert settings.headers_timeout_seconds == 10
    assert settings.keep_alive_timeout_seconds == 5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAX_HEADER_BYTES", "1023"),
        ("MAX_HEADER_BYTES", "16k"),
        ("HEADERS_TIMEOUT_SECONDS", "0"),
        ("KEEP_ALIVE_TIMEOUT_SECONDS", "0"),
        ("KEEP_ALIVE_TIMEOUT_SECONDS", "never"),
    ],
)
def test_connection_limits_out_of_range_are_refused_naming_them(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError, match=rf"(?<![A-Z_]){variable}\b"):
        load_settings()


def test_a_refusal_names_every_missing_or_invalid_setting_at_once() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(environment="production")
    assert "CURSOR_SECRET" in str(refused.value) and "API_KEYS" in str(refused.value)

    with pytest.raises(SettingsError) as refused:
        load_settings(
            environment="production",
            port="notaport",
            database_url="oracle://u@h/db",
            api_keys="writer:short",
        )
    message = str(refused.value)
    for named in ("PORT", "DATABASE_URL", "API_KEYS", "CURSOR_SECRET"):
        assert named in message, (named, message)


# --- rotation: several cursor secrets, secrets from files ---------------------------


def test_cursor_secret_may_list_several_secrets_the_first_signing() -> None:
    settings = load_settings(cursor_secret=" new-secret , old-secret,")

    assert settings.cursor_secrets == ["new-secret", "old-secret"]


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_a_cursor_secret_without_any_secret_counts_as_unset(value: str) -> None:
    assert load_settings(cursor_secret=value).cursor_secrets == [DEVELOPMENT_CURSOR_SECRET]
    with pytest.raises(SettingsError, match=r"\bCURSOR_SECRET\b.*built-in one is public"):
        load_settings(cursor_secret=value, environment="test")


def test_the_built_in_cursor_secret_among_several_is_refused_outside_development() -> None:
    with pytest.raises(SettingsError, match=r"\bCURSOR_SECRET\b.*built-in one is public"):
        load_settings(environment="test", cursor_secret=f"new-secret,{DEVELOPMENT_CURSOR_SECRET}")


SECRET_VALUES = {
    "API_KEYS": ("billing:k1,billing:k2", "api_keys"),
    "API_READ_KEYS": ("reports:k3", "api_read_keys"),
    "CURSOR_SECRET": ("new-secret,old-secret", "cursor_secret"),
    "DATABASE_URL": ("postgresql://u:p%40ss@db.example:5432/users", "database_url"),
}


@pytest.mark.parametrize("variable", SECRET_VALUES)
@pytest.mark.parametrize("ending", ["", "\n", "\r\n", "\n\n"])
def test_each_secret_may_be_read_from_a_file_without_its_trailing_line_break(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, ending: str
) -> None:
    value, field = SECRET_VALUES[variable]
    (tmp_path / "secret").write_text(value + ending, encoding="utf-8", newline="")
    monkeypatch.setenv(f"{variable}_FILE", str(tmp_path / "secret"))

    if variable != "CURSOR_SECRET":
        monkeypatch.setenv("CURSOR_SECRET", "a-private-value")  # API keys need one

    read = getattr(load_settings(), field)

    assert (read.get_secret_value() if isinstance(read, SecretStr) else read) == value


@pytest.mark.parametrize("variable", SECRET_VALUES)
def test_a_secret_and_its_file_both_set_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    value, _ = SECRET_VALUES[variable]
    (tmp_path / "secret").write_text(value, encoding="utf-8")
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv(f"{variable}_FILE", str(tmp_path / "secret"))

    with pytest.raises(SettingsError) as refused:
        load_settings()

    assert f"{variable} and {variable}_FILE are both set" in str(refused.value)


def test_unreadable_or_empty_secret_files_are_all_named_never_their_contents(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    (tmp_path / "binary").write_bytes(b"billing:\xff\xfe-hunter2")
    monkeypatch.setenv("API_KEYS_FILE", str(tmp_path / "binary"))
    monkeypatch.setenv("CURSOR_SECRET_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("DATABASE_URL_FILE", str(tmp_path / "missing"))

    with pytest.raises(SettingsError) as refused:
        load_settings(environment="production")

    message = str(refused.value)
    assert "API_KEYS_FILE" in message and "not UTF-8" in message
    assert "CURSOR_SECRET_FILE" in message and "is empty" in message
    assert "DATABASE_URL_FILE" in message and "No such file" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "database_url",
    [
        "postgresql://u:p%40ss@db1.internal:5432,db2.internal:5433/users"
        "?target_session_attrs=read-write",
        "postgresql+psycopg://u:p%40ss@db1.internal:5432,db2.internal:5433/users"
        "?target_session_attrs=read-write",
    ],
)
def test_a_list_of_postgresql_hosts_reaches_libpq_as_a_list(database_url: str) -> None:
    url = load_settings(database_url=database_url).sqlalchemy_url
    _, libpq = create_engine(url).dialect.create_connect_args(url)

    assert url.drivername == "postgresql+psycopg"
    assert (libpq["host"], libpq["port"]) == ("db1.internal,db2.internal", "5432,5433")
    assert (libpq["user"], libpq["password"], libpq["dbname"]) == ("u", "p@ss", "users")
    assert libpq["target_session_attrs"] == "read-write"


def test_a_host_list_with_an_empty_host_is_refused_without_quoting_the_url() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(database_url="postgresql://u:secret@db1:5432,/users")

    assert "DATABASE_URL" in str(refused.value) and "secret" not in str(refused.value)


def test_behind_a_transaction_pooler_no_startup_options_and_no_prepared_statements() -> None:
    pooled = load_settings(
        database_url="postgresql://u@h/db", db_pooler="transaction", db_statement_timeout_ms=1500
    )
    direct = load_settings(database_url="postgresql://u@h/db", db_statement_timeout_ms=1500)

    assert "options" not in postgresql_connect_args(pooled, None, "-c TimeZone=UTC")
    assert postgresql_connect_args(pooled, None)["prepare_threshold"] is None
    assert transaction_settings(pooled) == (
        "BEGIN; SET LOCAL TimeZone = 'UTC'; SET LOCAL statement_timeout = 1500"
    )
    assert postgresql_connect_args(direct, None, "-c TimeZone=UTC")["options"] == (
        "-c statement_timeout=1500 -c TimeZone=UTC"
    )
    assert "prepare_threshold" not in postgresql_connect_args(direct, None)
