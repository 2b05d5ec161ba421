"""name trigrams without the user_id index

MariaDB/MySQL: `user_name_trigrams` loses its secondary index on
`user_id`. It served only the triggers that delete a user's trigrams (on
UPDATE of the name, id or created_at, and on DELETE); they now delete by
the primary key instead, (trigram, created_at, user_id), with the trigrams
of the old name computed as the insert trigger computed them (the same
function, so exactly the rows it wrote).

Every new user inserted one entry per trigram (about 11) into that index
at a random place (its key is the random id), in a B-tree of 11 million
entries at a million users that a 128 MiB buffer pool does not hold:
seeding 190,000 users on top of 10,000 took 131 s and had the server
write 6.5 GB; without the index 60 s and 1.3 GB (issue 13,
docs/performance.md "Bulk loads"). The table also takes about half the
space (333 MB -> 153 MB at 200,000 users).

SQLite and PostgreSQL: nothing to do.

Revision ID: e4b7c19a2d63
Revises: 7c1e5a9d2b40
Create Date: 2026-11-30 12:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = 'e4b7c19a2d63'
down_revision: str | None = '7c1e5a9d2b40'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_user_name_trigrams_user_id"

# The distinct trigrams of LOWER({row}.name), as migrations 51e32271d567
# and 7c1e5a9d2b40 compute them for the insert trigger.
_TRIGRAMS = """
    WITH RECURSIVE positions (position) AS (
        SELECT 1 UNION ALL SELECT position + 1 FROM positions
        WHERE position < CHAR_LENGTH(LOWER({row}.name)) - 2
    )
    SELECT DISTINCT SUBSTRING(LOWER({row}.name), positions.position, 3){rest}
    FROM positions
    WHERE positions.position <= CHAR_LENGTH(LOWER({row}.name)) - 2"""
_INSERT_NEW = "INSERT INTO user_name_trigrams (trigram, created_at, user_id)" + _TRIGRAMS.format(
    row="NEW", rest=", NEW.created_at, NEW.id"
)
# The old row's trigrams, each found by the whole primary key (a derived
# table joined to the trigram table: eq_ref on PRIMARY; written as
# `trigram IN (...)` MariaDB 10.11 scans the whole table instead).
_DELETE_OLD = (
    "DELETE trigrams FROM user_name_trigrams AS trigrams JOIN ("
    + _TRIGRAMS.format(row="OLD", rest=" AS trigram")
    + """
    ) AS old_trigrams ON trigrams.trigram = old_trigrams.trigram
        AND trigrams.created_at = OLD.created_at AND trigrams.user_id = OLD.id"""
)
_CHANGED = (
    "BINARY OLD.name <> BINARY NEW.name OR OLD.id <> NEW.id OR OLD.created_at <> NEW.created_at"
)


def _triggers(delete_old: str) -> tuple[str, ...]:
    return (
        f"""CREATE TRIGGER user_name_trigrams_update AFTER UPDATE ON users FOR EACH ROW
        BEGIN
            IF {_CHANGED} THEN
                {delete_old};
                {_INSERT_NEW};
            END IF;
        END""",
        f"CREATE TRIGGER user_name_trigrams_delete AFTER DELETE ON users FOR EACH ROW {delete_old}",
    )


# IF EXISTS: DDL is not transactional on MariaDB, so an upgrade that was
# stopped half-way is run again from the start.
_DROP_TRIGGERS = (
    "DROP TRIGGER IF EXISTS user_name_trigrams_delete",
    "DROP TRIGGER IF EXISTS user_name_trigrams_update",
)


def _mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def _has_index() -> bool:
    found = op.get_bind().exec_driver_sql(
        f"SHOW INDEX FROM user_name_trigrams WHERE Key_name = '{_INDEX}'"
    )
    return found.first() is not None


def upgrade() -> None:
    if not _mysql():
        return
    for statement in (*_DROP_TRIGGERS, *_triggers(_DELETE_OLD)):
        op.execute(statement)
    if _has_index():
        op.execute(f"ALTER TABLE user_name_trigrams DROP INDEX {_INDEX}")


def downgrade() -> None:
    if not _mysql():
        return
    if not _has_index():
        op.execute(f"ALTER TABLE user_name_trigrams ADD INDEX {_INDEX} (user_id)")
    delete_by_user = "DELETE FROM user_name_trigrams WHERE user_id = OLD.id"
    for statement in (*_DROP_TRIGGERS, *_triggers(delete_by_user)):
        op.execute(statement)
