"""name search index

Name substrings served by an index on SQLite and MariaDB, as pg_trgm's GIN
index serves them on PostgreSQL (docs/performance.md, "Listing at scale"):

- SQLite: `users_name_fts`, an FTS5 table with the `trigram` tokenizer
  whose content is `users.name` (external content, keyed by the users
  table's rowid), kept in step by triggers on users.
- MariaDB/MySQL: `user_name_trigrams`, one row per distinct trigram of
  `LOWER(name)` and user, kept in step by triggers on users.

Triggers run inside the statement that writes the user, so every write
(the API's, seed, import, a hand-made UPDATE) keeps the index in step in
the same transaction. Existing rows are indexed here (backfill).

A later migration that recreates the users table on SQLite (batch mode)
drops these triggers with it and renumbers rowids: it must create them
again and rebuild the FTS table
(`INSERT INTO users_name_fts(users_name_fts) VALUES ('rebuild')`);
tests/unit/test_name_search.py checks that the index matches the table.

Revision ID: 51e32271d567
Revises: dc6a26b139b7
Create Date: 2026-11-30 06:30:26.707224
"""

from collections.abc import Sequence

from alembic import op

revision: str = '51e32271d567'
down_revision: str | None = 'dc6a26b139b7'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_UPGRADE = (
    """CREATE VIRTUAL TABLE users_name_fts USING fts5(
        name, content='users', content_rowid='rowid', tokenize='trigram')""",
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
    "INSERT INTO users_name_fts (users_name_fts) VALUES ('rebuild')",
)
SQLITE_DOWNGRADE = (
    "DROP TRIGGER users_name_fts_update",
    "DROP TRIGGER users_name_fts_delete",
    "DROP TRIGGER users_name_fts_insert",
    "DROP TABLE users_name_fts",
)

# The distinct trigrams of LOWER(name) of one user (`{row}` is NEW, or the
# users table itself for the backfill), as MariaDB lowers it: the same
# function the listing's `LOWER(name) LIKE ...` applies, so the index finds
# every row the plain scan would. For one row the positions stop at its
# name's length (three times cheaper per write than counting to 198).
_MYSQL_TRIGRAMS = """
    WITH RECURSIVE positions (position) AS (
        SELECT 1 UNION ALL SELECT position + 1 FROM positions WHERE position < {last}
    )
    SELECT DISTINCT SUBSTRING(LOWER({row}.name), positions.position, 3), {row}.id
    FROM positions{source}
    WHERE positions.position <= CHAR_LENGTH(LOWER({row}.name)) - 2"""
_NEW_ROW = {"row": "NEW", "source": "", "last": "CHAR_LENGTH(LOWER(NEW.name)) - 2"}
MYSQL_UPGRADE = (
    """CREATE TABLE user_name_trigrams (
        trigram VARCHAR(3) NOT NULL,
        user_id CHAR(32) NOT NULL,
        PRIMARY KEY (trigram, user_id),
        KEY ix_user_name_trigrams_user_id (user_id)
    ) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin""",
    "CREATE TRIGGER user_name_trigrams_insert AFTER INSERT ON users FOR EACH ROW "
    "INSERT INTO user_name_trigrams (trigram, user_id)"
    + _MYSQL_TRIGRAMS.format(**_NEW_ROW),
    """CREATE TRIGGER user_name_trigrams_update AFTER UPDATE ON users FOR EACH ROW
    BEGIN
        IF BINARY OLD.name <> BINARY NEW.name OR OLD.id <> NEW.id THEN
            DELETE FROM user_name_trigrams WHERE user_id = OLD.id;
            INSERT INTO user_name_trigrams (trigram, user_id)"""
    + _MYSQL_TRIGRAMS.format(**_NEW_ROW)
    + """;
        END IF;
    END""",
    "CREATE TRIGGER user_name_trigrams_delete AFTER DELETE ON users FOR EACH ROW "
    "DELETE FROM user_name_trigrams WHERE user_id = OLD.id",
    "INSERT INTO user_name_trigrams (trigram, user_id)"
    + _MYSQL_TRIGRAMS.format(row="users", source=" JOIN users", last=198),
)
MYSQL_DOWNGRADE = (
    "DROP TRIGGER user_name_trigrams_delete",
    "DROP TRIGGER user_name_trigrams_update",
    "DROP TRIGGER user_name_trigrams_insert",
    "DROP TABLE user_name_trigrams",
)


def _run(sqlite: Sequence[str], mysql: Sequence[str]) -> None:
    dialect = op.get_bind().dialect.name
    for statement in sqlite if dialect == "sqlite" else mysql if dialect in ("mysql", "mariadb") else ():
        op.execute(statement)


def upgrade() -> None:
    # PostgreSQL has ix_users_name_trgm (pg_trgm) since b1cd062f32eb.
    _run(SQLITE_UPGRADE, MYSQL_UPGRADE)


def downgrade() -> None:
    _run(SQLITE_DOWNGRADE, MYSQL_DOWNGRADE)
