"""name trigrams in creation order

MariaDB/MySQL: `user_name_trigrams` carries each user's `created_at` and is
keyed by `(trigram, created_at, user_id)`, so the holders of one trigram
are read in the listing's default order: a name search in that order walks
them and stops at a page, instead of intersecting every holder of two
trigrams and sorting the matches (issue 13: `Ada Lovelace` at a million
users, two trigrams of about 55,000 holders each, 127 ms p50;
docs/performance.md, "Name search").

The table is built anew from the old one joined to users (in key order),
then swapped in; the triggers are made again with `created_at`. SQLite and
PostgreSQL: nothing to do.

Revision ID: 7c1e5a9d2b40
Revises: 2f0a23782b22
Create Date: 2026-11-30 09:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '7c1e5a9d2b40'
down_revision: str | None = '2f0a23782b22'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The distinct trigrams of LOWER(NEW.name), as migration 51e32271d567
# computes them (the same function the listing's LIKE applies).
_TRIGRAMS = """
    WITH RECURSIVE positions (position) AS (
        SELECT 1 UNION ALL SELECT position + 1 FROM positions
        WHERE position < CHAR_LENGTH(LOWER(NEW.name)) - 2
    )
    SELECT DISTINCT SUBSTRING(LOWER(NEW.name), positions.position, 3){created_at}, NEW.id
    FROM positions
    WHERE positions.position <= CHAR_LENGTH(LOWER(NEW.name)) - 2"""


def _triggers(created_at: bool) -> tuple[str, ...]:
    columns = "trigram, created_at, user_id" if created_at else "trigram, user_id"
    select = _TRIGRAMS.format(created_at=", NEW.created_at" if created_at else "")
    changed = "BINARY OLD.name <> BINARY NEW.name OR OLD.id <> NEW.id"
    if created_at:
        changed += " OR OLD.created_at <> NEW.created_at"
    return (
        "CREATE TRIGGER user_name_trigrams_insert AFTER INSERT ON users FOR EACH ROW "
        f"INSERT INTO user_name_trigrams ({columns})" + select,
        f"""CREATE TRIGGER user_name_trigrams_update AFTER UPDATE ON users FOR EACH ROW
        BEGIN
            IF {changed} THEN
                DELETE FROM user_name_trigrams WHERE user_id = OLD.id;
                INSERT INTO user_name_trigrams ({columns})"""
        + select
        + """;
            END IF;
        END""",
        "CREATE TRIGGER user_name_trigrams_delete AFTER DELETE ON users FOR EACH ROW "
        "DELETE FROM user_name_trigrams WHERE user_id = OLD.id",
    )


# IF EXISTS: DDL is not transactional on MariaDB, so an upgrade that was
# stopped half-way is run again from the start.
_DROP_TRIGGERS = (
    "DROP TRIGGER IF EXISTS user_name_trigrams_delete",
    "DROP TRIGGER IF EXISTS user_name_trigrams_update",
    "DROP TRIGGER IF EXISTS user_name_trigrams_insert",
)


def _mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def upgrade() -> None:
    if not _mysql():
        return
    for statement in (
        *_DROP_TRIGGERS,
        "DROP TABLE IF EXISTS user_name_trigrams_by_creation",
        """CREATE TABLE user_name_trigrams_by_creation (
            trigram VARCHAR(3) NOT NULL,
            created_at DATETIME(6) NOT NULL,
            user_id CHAR(32) NOT NULL,
            PRIMARY KEY (trigram, created_at, user_id),
            KEY ix_user_name_trigrams_user_id (user_id)
        ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin""",
        # Users in creation order, each one's trigrams found by its id: the
        # rows arrive at the end of each trigram's range of the new key,
        # so the table is written in order. Joined the other way, or
        # sorted by the new key, a million users took more than 9 minutes
        # in a temporary table (128 MiB buffer pool) and were stopped.
        """INSERT INTO user_name_trigrams_by_creation (trigram, created_at, user_id)
        SELECT STRAIGHT_JOIN trigrams.trigram, users.created_at, trigrams.user_id
        FROM users FORCE INDEX (ix_users_created_at_id)
        JOIN user_name_trigrams AS trigrams ON trigrams.user_id = users.id
        ORDER BY users.created_at, users.id""",
        "DROP TABLE user_name_trigrams",
        "RENAME TABLE user_name_trigrams_by_creation TO user_name_trigrams",
        *_triggers(created_at=True),
    ):
        op.execute(statement)


def downgrade() -> None:
    if not _mysql():
        return
    for statement in (
        *_DROP_TRIGGERS,
        "ALTER TABLE user_name_trigrams DROP PRIMARY KEY, DROP COLUMN created_at,"
        " ADD PRIMARY KEY (trigram, user_id)",
        *_triggers(created_at=False),
    ):
        op.execute(statement)
