"""Schema state: the migrations on disk and where a database stands against them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import exc, text
from sqlalchemy.engine import Connection

from users_service.db.errors import is_unavailable

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Installed from the wheel: the migrations travel inside the package (the
# wheel carries the checkout's top-level migrations/ there, pyproject.toml).
INSTALLED_MIGRATIONS = PACKAGE_DIR / "migrations"
# A checkout (or an editable install): the developers' alembic.ini, whose
# script_location is the top-level migrations/.
ALEMBIC_INI = PACKAGE_DIR.parent / "alembic.ini"

SchemaState = Literal["current", "behind", "ahead", "unknown"]


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic's configuration for the migrations that came with this code."""
    if (INSTALLED_MIGRATIONS / "env.py").is_file():
        config = Config()
        config.set_main_option("script_location", str(INSTALLED_MIGRATIONS))
        config.set_main_option("path_separator", "os")
    else:
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
