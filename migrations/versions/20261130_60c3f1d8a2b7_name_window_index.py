"""name window index

MariaDB/MySQL: an index on users (created_at, id, name),
`ix_users_created_at_id_name` (models.NAME_WINDOW_INDEX). A name query of
one or two characters (no trigram) tests the users of its windows, 1,000
then 4,000 users in the default order (crud.WINDOWS); through
`ix_users_created_at_id` MariaDB reads each of them by its random id to
test the name, 12.8 ms for the 4,000-user window at a million users. With
this index forced (name_search.window_index) the window's keys are found
and their names tested in the index alone, and only the matches are read:
1.2 ms (docs/performance.md, "Short name queries on MariaDB"). Built in
1.5-2.6 s at a million users.

Left out of autogenerate (models.MARIADB_ONLY_INDEXES, migrations/env.py):
the model declares the indexes every database has.

SQLite and PostgreSQL: nothing to do (they read a window's users at 3-8 ms
at a million users, docs/performance.md).

Revision ID: 60c3f1d8a2b7
Revises: 9d3e6f1a2b7c
Create Date: 2026-11-30 18:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '60c3f1d8a2b7'
down_revision: str | None = '9d3e6f1a2b7c'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_users_created_at_id_name"


def _mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def _has_index() -> bool:
    found = op.get_bind().exec_driver_sql(f"SHOW INDEX FROM users WHERE Key_name = '{_INDEX}'")
    return found.first() is not None


# Checked first: DDL is not transactional on MariaDB, so an upgrade that was
# stopped half-way is run again from the start.
def upgrade() -> None:
    if _mysql() and not _has_index():
        # Online: writes to users go on while the index is built.
        op.execute(
            f"ALTER TABLE users ADD INDEX {_INDEX} (created_at, id, name),"
            " ALGORITHM=INPLACE, LOCK=NONE"
        )


def downgrade() -> None:
    if _mysql() and _has_index():
        op.execute(f"ALTER TABLE users DROP INDEX {_INDEX}")
