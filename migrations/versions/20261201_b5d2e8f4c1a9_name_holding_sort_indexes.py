"""name holding sort indexes

MariaDB/MySQL: indexes on users (age, id, name), `ix_users_age_id_name`,
and (email, id, name), `ix_users_email_id_name` (models.AGE_NAME_INDEX,
EMAIL_NAME_INDEX). A name query in age or email order walks one of them,
testing the names in the index, and reads only the matches by id
(name_search.window_index), as created_at order does with
`ix_users_created_at_id_name` (60c3f1d8a2b7) and name order with
`ix_users_name_id`. Through the plain sort indexes MariaDB read each user
it walked by its random id: `name=Ada Lovelace&sort=email` took 348 ms at
a million users, 10.7 ms with the index (docs/design.md, decision 7).
Both built in 3.1 s at a million users.

Left out of autogenerate (models.MARIADB_ONLY_INDEXES, migrations/env.py):
the model declares the indexes every database has.

SQLite and PostgreSQL: nothing to do.

Revision ID: b5d2e8f4c1a9
Revises: 60c3f1d8a2b7
Create Date: 2026-12-01 01:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'b5d2e8f4c1a9'
down_revision: str | None = '60c3f1d8a2b7'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_users_age_id_name": "age, id, name",
    "ix_users_email_id_name": "email, id, name",
}


def _mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def _has_index(name: str) -> bool:
    found = op.get_bind().exec_driver_sql(f"SHOW INDEX FROM users WHERE Key_name = '{name}'")
    return found.first() is not None


# Each checked first: DDL is not transactional on MariaDB, so an upgrade
# that was stopped half-way is run again from the start.
def upgrade() -> None:
    if not _mysql():
        return
    for name, columns in _INDEXES.items():
        if not _has_index(name):
            # Online: writes to users go on while the index is built.
            op.execute(
                f"ALTER TABLE users ADD INDEX {name} ({columns}), ALGORITHM=INPLACE, LOCK=NONE"
            )


def downgrade() -> None:
    if not _mysql():
        return
    for name in _INDEXES:
        if _has_index(name):
            op.execute(f"ALTER TABLE users DROP INDEX {name}")
