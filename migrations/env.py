"""Alembic's entry point: migrations run against the service's own database.

The URL comes from `config.attributes["database_url"]` when a caller (the
tests, the CLI) passes one, else from the service's settings. The metadata
is SQLModel's, so `alembic revision --autogenerate` compares the database
with `users_service/models.py`.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from users_service import models  # registers the tables
from users_service.settings import load_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = models.metadata


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Leave the hand-made objects out of autogenerate: the PostgreSQL-only
    and MariaDB-only indexes and the name search tables of SQLite and
    MariaDB."""
    hand_made = models.POSTGRESQL_ONLY_INDEXES | models.MARIADB_ONLY_INDEXES
    if type_ == "index" and name in hand_made:
        return False
    return not (type_ == "table" and name in models.NAME_SEARCH_TABLES)


def database_url() -> str:
    url = config.attributes.get("database_url")
    settings = load_settings(database_url=url) if url else load_settings()
    return settings.sqlalchemy_url.render_as_string(hide_password=False)


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things: batch mode copies the table.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            include_object=include_object,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
