"""Schema state: the migrations on disk and where a database stands against them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import exc, text
from sqlalchemy.engine import Connection

from users_service.db.errors import is_unavailable

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"

SchemaState = Literal["current", "behind", "ahead", "unknown"]


def alembic_config(database_url: str | None = None) -> Config:
    config = Config(str(ALEMBIC_INI))
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def migration_revisions() -> tuple[set[str], set[str]]:
    """(the newest revisions, every revision) of the migrations on disk."""
    script = ScriptDirectory.from_config(alembic_config())
    return set(script.get_heads()), {rev.revision for rev in script.walk_revisions()}


def head_revisions() -> set[str]:
    return migration_revisions()[0]


def compare_revisions(current: set[str], *, heads: set[str], known: set[str]) -> SchemaState:
    """Where a database at revisions `current` stands against the migrations."""
    if current == heads:
        return "current"
    if current - known:
        return "ahead"
    return "behind"


def schema_state(connection: Connection, *, heads: set[str], known: set[str]) -> SchemaState:
    """Compare the database's Alembic revision with the newest migration."""
    try:
        rows = connection.execute(text("SELECT version_num FROM alembic_version"))
        current = {row[0] for row in rows}
    except exc.ProgrammingError:
        return "behind"  # never migrated
    except exc.OperationalError as error:
        if is_unavailable(error) and "no such table" not in str(error.orig):
            raise
        return "behind"
    return compare_revisions(current, heads=heads, known=known)
