"""SQLite: ids and timestamps stored as the API shows them

SQLite only. User ids become their 36-character dashed text (CHAR(32) ->
CHAR(36)) and timestamps 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (was
'YYYY-MM-DD HH:MM:SS.ffffff'), in every table that holds them: users,
idempotency_keys, idempotency_key_users and user_changes. A page's JSON
then takes them as they are instead of putting dashes, a 'T' and a 'Z' in
for every row: at 100,000 users the statement of GET /users?limit=50 went
from 117 to 63 µs (models.DashedUuid, docs/performance.md).

Both forms sort as the values do, so every index keeps its order. The
declared type changes, which SQLite can only do by copying the table
(Alembic's batch mode): the copy gives users new rowids, so the name index
(FTS5, external content keyed by rowid) is rebuilt and its triggers made
again; user_changes keeps its AUTOINCREMENT counter.

PostgreSQL and MariaDB: nothing to do.

Revision ID: 9d3e6f1a2b7c
Revises: e4b7c19a2d63
Create Date: 2026-11-30 18:30:00.000000
"""

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '9d3e6f1a2b7c'
down_revision: str | None = 'e4b7c19a2d63'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The name index's triggers, as migration 51e32271d567 made them.
_NAME_TRIGGERS = (
    """CREATE TRIGGER users_name_fts_insert AFTER INSERT ON users BEGIN
        INSERT INTO users_name_fts (rowid, name) VALUES (new.rowid, new.name);
    END""",
    """CREATE TRIGGER users_name_fts_delete AFTER DELETE ON users BEGIN
        INSERT INTO users_name_fts (users_name_fts, rowid, name)
        VALUES ('delete', old.rowid, old.name);
    END""",
    """CREATE TRIGGER users_name_fts_update AFTER UPDATE OF name ON users
    WHEN old.name IS NOT new.name BEGIN
        INSERT INTO users_name_fts (users_name_fts, rowid, name)
        VALUES ('delete', old.rowid, old.name);
        INSERT INTO users_name_fts (rowid, name) VALUES (new.rowid, new.name);
    END""",
)
_NAME_TRIGGER_NAMES = ("users_name_fts_insert", "users_name_fts_delete", "users_name_fts_update")


def _dashed(column: str) -> str:
    return (
        f"substr({column}, 1, 8) || '-' || substr({column}, 9, 4) || '-' || "
        f"substr({column}, 13, 4) || '-' || substr({column}, 17, 4) || '-' || "
        f"substr({column}, 21, 12)"
    )


def _undashed(column: str) -> str:
    return f"replace({column}, '-', '')"


def _api_time(column: str) -> str:
    return f"replace({column}, ' ', 'T') || 'Z'"


def _plain_time(column: str) -> str:
    return f"replace(replace({column}, 'T', ' '), 'Z', '')"


# (table, id columns, timestamp columns, options the copy must keep)
_TABLES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], dict[str, bool]], ...] = (
    ("users", ("id",), ("created_at", "updated_at"), {}),
    ("idempotency_keys", (), ("created_at",), {}),
    ("idempotency_key_users", ("user_id",), (), {"sqlite_with_rowid": False}),
    ("user_changes", ("user_id",), ("at",), {"sqlite_autoincrement": True}),
)


def _convert(
    to_id: Callable[[str], str],
    to_time: Callable[[str], str],
    id_type: sa.types.TypeEngine[str],
    old_id_type: sa.types.TypeEngine[str],
) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for trigger in _NAME_TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER {trigger}")
    # The copy writes a new counter: keep the one retention may have left above max(seq).
    counter = op.get_bind().execute(
        sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'user_changes'")
    ).scalar()
    for table, ids, times, options in _TABLES:
        forms = [f"{c} = {to_id(c)}" for c in ids] + [f"{c} = {to_time(c)}" for c in times]
        op.execute(f"UPDATE {table} SET {', '.join(forms)}")
        if ids:
            with op.batch_alter_table(table, recreate="always", table_kwargs=options) as batch:
                for column in ids:
                    batch.alter_column(
                        column, existing_type=old_id_type, type_=id_type, existing_nullable=False
                    )
    if counter is not None:
        op.execute("DELETE FROM sqlite_sequence WHERE name = 'user_changes'")
        op.execute(f"INSERT INTO sqlite_sequence (name, seq) VALUES ('user_changes', {int(counter)})")
    for trigger in _NAME_TRIGGERS:
        op.execute(trigger)
    op.execute("INSERT INTO users_name_fts (users_name_fts) VALUES ('rebuild')")


def upgrade() -> None:
    _convert(_dashed, _api_time, sa.CHAR(36), sa.CHAR(32))


def downgrade() -> None:
    _convert(_undashed, _plain_time, sa.CHAR(32), sa.CHAR(36))
