"""Import and export users as CSV or JSON Lines: streamed, in batches.

Import reads the file a line at a time (never the whole file), checks every
row with the API's own rules (`UserCreate`), and writes the rows in batches
through `db.bulk.bulk_load`: one transaction each on PostgreSQL and
MariaDB, one transaction for the whole file on SQLite. Collisions are
refused by the database's unique indexes (no check-then-insert): a row
whose email (or id) is taken is either already present (the same user:
same email, name and age, and the same id when the row has one) or
rejected. Each batch goes first into a temporary table of the run's rows
(by COPY on PostgreSQL), which is how emails repeated within the file are
recognised without the client's memory growing with the file, then into
users with one INSERT ... SELECT.

Export walks the users by key, (created_at, id) after the last row written,
one bounded page per statement (never OFFSET, never the whole table), inside
one read transaction, and writes what import reads back.

The files both write (the export, the rejects) are written whole or not at
all, never through a symbolic link and never over the input or the
database (`safe_output_file`). CSV cells a spreadsheet would run as a
formula are written with a leading quote, which import takes off again
(`quote_formula`, `unquote_formula`), unless asked for raw cells.
"""

from __future__ import annotations

import csv
import gc
import io
import os
import re
import secrets
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import IO, Any, Literal, cast

import orjson
from pydantic import ValidationError
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Engine,
    Index,
    Insert,
    Integer,
    MetaData,
    Table,
    exists,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import DropTable
from tqdm import tqdm

from users_service import changes
from users_service.changes import IMPORT_SOURCE, ChangeSource
from users_service.db.bulk import BulkLoad, bulk_load, copy_rows, user_count
from users_service.db.engine import WRITE_OPTION
from users_service.db.rendering import to_record
from users_service.models import (
    EDITABLE_FIELDS,
    MYSQL_TABLE_OPTIONS,
    PUBLIC_FIELDS,
    REQUIRED_FIELDS,
    UserCreate,
    users,
)
from users_service.pagination import SortOrder

Format = Literal["jsonl", "csv"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv")
EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# The columns of a file: every field of a user as the API shows it; a row
# must give the fields a create must give.
COLUMNS = PUBLIC_FIELDS
REQUIRED_COLUMNS = REQUIRED_FIELDS
OPTIONAL_COLUMNS = tuple(name for name in COLUMNS if name not in REQUIRED_COLUMNS)
# Editable fields that CSV (text) gives as decimal integers.
INTEGER_FIELDS = tuple(name for name in EDITABLE_FIELDS if users.c[name].type.python_type is int)
REJECT_COLUMNS = ("line", "code", "reason")

# A batch's emails and ids are looked up in one statement each: SQLite allows
# 32,766 parameters in one.
BATCH_SIZE_MAX = 10_000
DEFAULT_BATCH_SIZE = 10_000
VERSION_MAX = 2**31 - 1
# What every database's timestamp column holds (MariaDB's DATETIME starts at 1000).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

_INTEGER = re.compile(r"-?[0-9]{1,18}")


class TransferError(Exception):
    """The file as a whole cannot be imported (format, header); the message says why."""


def format_of(path: Path, given: str | None = None) -> Format:
    """The format named by `given`, else by the file's extension."""
    if given is not None:
        if given not in FORMATS:
            raise TransferError(f"unknown format {given!r}; use csv or jsonl")
        return given
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise TransferError(
            f"cannot tell the format of {path.name} from its extension "
            "(.csv, .jsonl or .ndjson); name it with --format"
        ) from None


def default_rejects_path(path: Path, fmt: Format) -> Path:
    """users.csv -> users.rejects.csv; data.txt -> data.txt.rejects.csv."""
    if path.suffix.lower() in EXTENSIONS:
        return path.with_name(f"{path.stem}.rejects{path.suffix}")
    return path.with_name(f"{path.name}.rejects.{fmt}")


# --- CSV cells a spreadsheet would run ------------------------------------

# A CSV cell that starts with one of these is a formula to a spreadsheet
# (OWASP, "CSV Injection"); a leading quote makes it text. A cell that
# already starts with the quote followed by one of these, or by another
# quote, gets one more, so that taking exactly one off gives every value
# back as it was.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_QUOTED_STARTS = tuple(f"'{start}" for start in (*FORMULA_STARTS, "'"))
_NEEDS_QUOTE = FORMULA_STARTS + _QUOTED_STARTS


def quote_formula(cell: str) -> str:
    """The cell as written to CSV: `=1+1` -> `'=1+1`, `'=x` -> `''=x`, `O'Brien` as it is."""
    return "'" + cell if cell.startswith(_NEEDS_QUOTE) else cell


def unquote_formula(cell: str) -> str:
    """The value `quote_formula` wrote `cell` for: one leading quote off,
    when a formula character or another quote follows it."""
    return cell[1:] if cell.startswith(_QUOTED_STARTS) else cell


def _quote_formulas(cells: Iterable[Any]) -> list[Any]:
    return [quote_formula(cell) if type(cell) is str else cell for cell in cells]


# Where an export's text fields are in its rows: only they can start like
# a formula (ids are hex, timestamps start with the year, an integer is a
# number to a spreadsheet even when negative). Looking at every cell would
# cost 1.5 s per million rows, at these 0.5 s (of the 12.8 s a CSV export
# of a million users takes, docs/import-export.md).
_TEXT_CELLS = tuple(
    index for index, name in enumerate(COLUMNS) if users.c[name].type.python_type is str
)


def _quote_text_formulas(row: list[Any]) -> list[Any]:
    for index in _TEXT_CELLS:
        cell = row[index]
        if type(cell) is str and cell.startswith(_NEEDS_QUOTE):
            row[index] = "'" + cell
    return row


# --- files written whole --------------------------------------------------


@dataclass
class PendingOutput:
    """A file being written next to its final name; `keep = False` drops it."""

    stream: IO[Any]
    keep: bool = True


def database_files(engine: Engine) -> dict[Path, str]:
    """The files of the engine's SQLite database, and what each is (none for a server)."""
    name = engine.url.database
    if engine.dialect.name != "sqlite" or not name or name == ":memory:":
        return {}
    files = {Path(name): "the database"}
    for suffix in ("-wal", "-shm", "-journal"):
        files[Path(name + suffix)] = f"the database's {suffix} file"
    return files


def refuse_unsafe_output(path: Path, protected: Mapping[Path, str]) -> None:
    """Raise TransferError when writing `path` would follow a symbolic link,
    replace something that is not a regular file, or overwrite one of the
    `protected` files (however spelled, or through a hard link)."""
    if path.is_symlink():
        raise TransferError(f"{path} is a symbolic link; refusing to write through it")
    for other, what in protected.items():
        if _same_file(path, other):
            raise TransferError(f"{path} is {what}; refusing to write over it")
    if path.exists() and not path.is_file():
        raise TransferError(f"{path} is not a regular file; refusing to replace it")


def _same_file(path: Path, other: Path) -> bool:
    if path.resolve() == other.resolve():
        return True
    try:
        return os.path.samefile(path, other)  # the same device and inode
    except OSError:  # either does not exist
        return False


@contextmanager
def safe_output_file(
    path: Path, *, protected: Mapping[Path, str] | None = None, mode: str = "wb", **open_args: Any
) -> Iterator[PendingOutput]:
    """Write `path` whole or not at all.

    Refused first (`refuse_unsafe_output`). The data goes to a hidden
    temporary file in the same directory, which replaces `path` in one
    rename when the block ends normally with `keep` still true; otherwise
    (an error, an interrupt, `keep = False`) it is removed and `path` is left
    as it was. A replaced file keeps its permissions.
    """
    refuse_unsafe_output(path, protected or {})
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise TransferError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(descriptor, mode, **open_args) as stream:
            pending = PendingOutput(stream)
            yield pending
            stream.flush()
            os.fsync(stream.fileno())
        if pending.keep:
            with suppress(FileNotFoundError):
                temporary.chmod(path.stat().st_mode & 0o7777)
            os.replace(temporary, path)
            _sync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _sync_directory(directory: Path) -> None:
    """Make a rename in `directory` survive a power cut."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- reading and checking rows -------------------------------------------


@dataclass
class Reject:
    line: int
    code: str
    reason: str
    raw: Any  # the row as read: CSV fields, or the JSON value (or text)


@dataclass
class Candidate:
    """A valid row, ready to insert."""

    line: int
    values: dict[str, Any]  # a row of the users table, and its "line"
    has_id: bool  # whether the id came from the file
    raw: Any
    # SQLite: the ledger row, ready for the driver (see sqlite_ledger_params)
    params: tuple[Any, ...] | None = None


class RowError(ValueError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def check_row(
    fields: dict[str, Any], *, from_text: bool, default_created_at: datetime
) -> tuple[dict[str, Any], bool]:
    """A users row from one row of the file, and whether it named its id.

    The user's fields go through `UserCreate`, as a POST body does; CSV
    cells are text, so there integer fields and `version` are read as
    decimal integers first. Raises RowError saying every field that is wrong.
    """
    problems = [f"{name}: unknown field" for name in fields if name not in COLUMNS]
    user_fields = {name: fields[name] for name in EDITABLE_FIELDS if name in fields}
    if from_text:
        for name in INTEGER_FIELDS:
            if isinstance(user_fields.get(name), str):
                user_fields[name] = _text_integer(user_fields[name])
    user: UserCreate | None = None
    try:
        user = UserCreate.model_validate(user_fields)
    except ValidationError as error:
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"]) or "row"
            problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")

    user_id: uuid.UUID | None = None
    if "id" in fields:
        with suppress(ValueError):
            user_id = uuid.UUID(fields["id"]) if isinstance(fields["id"], str) else None
        if user_id is None:
            problems.append("id: must be a UUID")
    created_at = _timestamp(fields, "created_at", problems) or default_created_at
    updated_at = _timestamp(fields, "updated_at", problems) or created_at
    if updated_at < created_at:
        problems.append("updated_at: must not be before created_at")
    version = fields.get("version", 1)
    if from_text and isinstance(version, str):
        version = _text_integer(version)
    if type(version) is not int or not 1 <= version <= VERSION_MAX:
        problems.append(f"version: must be an integer from 1 to {VERSION_MAX}")

    if problems or user is None:
        raise RowError("validation_failed", "; ".join(problems))
    values = {
        "id": user_id or uuid.uuid4(),
        **user.model_dump(),
        "created_at": created_at,
        "updated_at": updated_at,
        "version": version,
    }
    return values, user_id is not None


def _text_integer(value: str) -> int | str:
    value = value.strip()
    return int(value) if _INTEGER.fullmatch(value) else value


def _timestamp(fields: dict[str, Any], name: str, problems: list[str]) -> datetime | None:
    if name not in fields:
        return None
    value = fields[name]
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is not None:
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        if EARLIEST <= parsed <= LATEST:
            return parsed
    problems.append(f"{name}: must be an ISO 8601 timestamp from 1970 to 9999")
    return None


def _lines(stream: IO[bytes], bar: tqdm[Any]) -> Iterator[bytes]:
    for line in stream:
        bar.update(len(line))
        yield line


class Source:
    """The rows of one file, read a line at a time."""

    def __init__(
        self,
        lines: Iterator[bytes],
        fmt: Format,
        started: datetime,
        dialect: str,
        *,
        raw: bool = False,
    ) -> None:
        self.fmt = fmt
        self.started = started
        self.dialect = dialect
        self.raw = raw  # CSV cells as they are: no quote taken off (unquote_formula)
        self.columns: list[str] = []
        if fmt == "csv":
            text = (line.decode("utf-8", "surrogateescape") for line in lines)
            self._reader = csv.reader(text)
            self.columns = self._read_header()
        self._optional = [name for name in self.columns if name in OPTIONAL_COLUMNS]
        self._lines = lines

    def _read_header(self) -> list[str]:
        try:
            header = next(self._reader)
        except StopIteration:
            raise TransferError("the file is empty: a CSV file starts with a header row") from None
        except csv.Error as error:
            raise TransferError(f"the header row is not valid CSV: {error}") from None
        columns = [name.strip() for name in header]
        if columns:
            columns[0] = columns[0].removeprefix("\ufeff")
        unknown = [name for name in columns if name not in COLUMNS]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        repeated = sorted({name for name in columns if columns.count(name) > 1})
        if unknown or missing or repeated:
            problems = [f"unknown column {name!r}" for name in unknown]
            problems += [f"missing column {name!r}" for name in missing]
            problems += [f"column {name!r} appears twice" for name in repeated]
            raise TransferError(
                f"the header row must name {', '.join(REQUIRED_COLUMNS)} (and may name "
                f"{', '.join(OPTIONAL_COLUMNS)}): " + "; ".join(problems)
            )
        return columns

    def rows(self, *, workers: int = 0) -> Iterator[Candidate | Reject]:
        """Every row, checked, in file order.

        With `workers`, rows are checked in that many other processes
        (checking an email costs more than writing the row), a few chunks
        at a time: memory stays bounded however long the file is.
        """
        records = self._csv_records() if self.fmt == "csv" else self._json_records()
        chunks = _chunks(records, CHECK_CHUNK_SIZE)
        if workers == 0:
            for chunk in chunks:
                checked = check_records(self.fmt, self.started, chunk, self.dialect)
                yield from self._merge(chunk, checked)
            return
        with ProcessPoolExecutor(workers, initializer=_worker_started) as pool:
            pending: deque[tuple[list[Record], Future[list[Checked]]]] = deque()
            for chunk in chunks:
                wellformed: list[Record] = [
                    (line, fields, None) for line, fields, _ in chunk if fields is not None
                ]
                future = pool.submit(
                    _check_in_worker, self.fmt, self.started, wellformed, self.dialect
                )
                pending.append((chunk, future))
                if len(pending) > 2 * workers:
                    chunk, future = pending.popleft()
                    yield from self._merge(chunk, future.result())
            while pending:
                chunk, future = pending.popleft()
                yield from self._merge(chunk, future.result())

    @staticmethod
    def _merge(chunk: list[Record], checked: list[Checked]) -> Iterator[Candidate | Reject]:
        results = iter(checked)
        for line, fields, raw in chunk:
            if fields is None:
                yield Reject(line, "malformed", raw[1], raw[0])
                continue
            _line, outcome, detail, params = next(results)
            if isinstance(outcome, str):
                yield Reject(line, outcome, str(detail), raw)
            else:
                yield Candidate(line, outcome, bool(detail), raw, params)

    def _csv_records(self) -> Iterator[Record]:
        width = len(self.columns)
        while True:
            line = self._reader.line_num + 1
            try:
                cells = next(self._reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield line, None, ([], f"not valid CSV: {error}")
                continue
            if not cells:
                continue  # a blank line
            # Only a row with a quote somewhere can have a cell to unquote:
            # looking first saves 1.5 s per million rows of the writing process.
            if not self.raw and "'" in "".join(cells):
                cells = [unquote_formula(cell) for cell in cells]
            if len(cells) != width:
                yield line, None, (cells, f"expected {width} fields, found {len(cells)}")
                continue
            fields = dict(zip(self.columns, cells, strict=True))
            for name in self._optional:
                if not fields[name]:
                    del fields[name]  # an empty optional cell: the value is absent
            yield line, fields, cells

    def _json_records(self) -> Iterator[Record]:
        for line, data in enumerate(self._lines, 1):
            if line == 1:
                data = data.removeprefix(b"\xef\xbb\xbf")  # a byte order mark
            if not data.strip():
                continue
            try:
                value = orjson.loads(data)
            except orjson.JSONDecodeError as error:
                text = data.decode("utf-8", "replace").rstrip("\r\n")
                yield line, None, (text, f"not valid JSON: {error.msg}")
                continue
            if not isinstance(value, dict):
                yield line, None, (value, "must be a JSON object")
                continue
            yield line, value, value


# (line, the row's fields or None when malformed, the row as read)
Record = tuple[int, dict[str, Any] | None, Any]
# (line, a users row and whether it named its id) or (line, code, reason)
Checked = tuple[int, dict[str, Any] | str, bool | str, tuple[Any, ...] | None]
CHECK_CHUNK_SIZE = 1_000


def check_records(
    fmt: Format, started: datetime, records: list[Record], dialect: str
) -> list[Checked]:
    """Check the well-formed records (run in a worker process, or in this one)."""
    to_params = sqlite_ledger_params() if dialect == "sqlite" else None
    checked: list[Checked] = []
    for line, fields, _raw in records:
        if fields is None:
            continue
        # One microsecond apart: listing by created_at keeps the file's order.
        default_created_at = started + timedelta(microseconds=line)
        try:
            values, has_id = check_row(
                fields, from_text=fmt == "csv", default_created_at=default_created_at
            )
        except RowError as error:
            checked.append((line, error.code, error.reason, None))
        else:
            values["line"] = line
            checked.append((line, values, has_id, to_params(values) if to_params else None))
    return checked


@cache
def sqlite_ledger_params() -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A ledger row as SQLite's driver takes it, made by SQLAlchemy's own
    bind processors (ids and timestamps as SQLite stores them): done where rows
    are checked, the writing process hands batches to the driver as they are."""
    dialect = sqlite.dialect()
    processors = [
        (name, ledger.c[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in _SQLITE_LEDGER_INSERT.positiontup or ()
    ]

    def params(values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            values[name] if process is None else process(values[name])
            for name, process in processors
        )

    return params


def _worker_started() -> None:
    # The process that writes handles Ctrl-C and SIGTERM (removing a file
    # half written, shutting the checkers down): a checker ignores Ctrl-C,
    # sent to the whole process group, and dies at once on SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    gc.freeze()
    gc.disable()  # see _collect_once_per_batch


def _check_in_worker(
    fmt: Format, started: datetime, records: list[Record], dialect: str
) -> list[Checked]:
    checked = check_records(fmt, started, records, dialect)
    gc.collect()
    return checked


@contextmanager
def _collect_once_per_batch() -> Iterator[None]:
    """Run the cyclic garbage collector once per batch (the caller's
    gc.collect()), not every 700 allocations: an import allocates millions
    of objects, which reference counting frees, and each automatic pass
    would scan all of the batch's (and, without freezing them, every module's).
    """
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class RejectWriter:
    """Rejected rows, in the input's format, with their line and reason;
    CSV cells with formulas quoted unless `raw` (as the export's)."""

    def __init__(
        self, stream: IO[str], fmt: Format, columns: list[str], *, raw: bool = False
    ) -> None:
        self.stream = stream
        self.fmt = fmt
        self.raw = raw
        self.count = 0
        if fmt == "csv":
            self._csv = csv.writer(stream, lineterminator="\n")
            self._csv.writerow([*REJECT_COLUMNS, *columns])

    def write(self, rejects: Iterable[Reject]) -> None:
        for reject in sorted(rejects, key=lambda r: r.line):
            self.count += 1
            if self.fmt == "csv":
                row = [reject.line, reject.code, reject.reason, *reject.raw]
                self._csv.writerow(row if self.raw else _quote_formulas(row))
            else:
                record = {
                    "line": reject.line,
                    "code": reject.code,
                    "reason": reject.reason,
                    "row": reject.raw,
                }
                self.stream.write(orjson.dumps(record).decode() + "\n")


# --- writing batches ------------------------------------------------------

# The run's rows, keyed by their line: how a later row with the same email
# (or id) is told apart from a user that was there before, and where each
# batch is inserted into users from, in one INSERT ... SELECT. Temporary:
# private to the connection, gone when it closes.
_ledger_metadata = MetaData()
ledger = Table(
    "users_import_ledger",
    _ledger_metadata,
    # INTEGER PRIMARY KEY is SQLite's rowid: lines are appended in order.
    Column("line", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    *(
        Column(name, users.c[name].type, unique=name == "email", nullable=users.c[name].nullable)
        for name in COLUMNS
    ),
    prefixes=["TEMPORARY"],
    **cast(dict[str, Any], MYSQL_TABLE_OPTIONS),
)
# Made only once a row of the file names its id (most files name none).
_ledger_id_index = Index("ix_users_import_ledger_id", ledger.c.id)
ledger.indexes.discard(_ledger_id_index)
LEDGER_COLUMNS = ("line", *COLUMNS)
_SQLITE_LEDGER_INSERT = insert(ledger).compile(dialect=sqlite.dialect())


@dataclass
class BatchResult:
    imported: int
    already_present: int
    rejects: list[Reject]


def write_batch(
    *, connection: Connection, batch: list[Candidate], source: ChangeSource = IMPORT_SOURCE
) -> BatchResult:
    """Insert a batch (in the caller's transaction), with a `created` change
    for each user inserted; the ledger must exist."""
    rejects: list[Reject] = []
    kept = _drop_repeated_rows(connection=connection, batch=batch, rejects=rejects)
    if not kept:
        return BatchResult(0, 0, rejects)
    dialect = connection.dialect.name
    if dialect == "postgresql":
        rows = [c.values for c in kept]  # with their "line"
        copy_rows(connection, rows, table=ledger.name, columns=LEDGER_COLUMNS)
    elif dialect == "sqlite" and all(c.params for c in kept):
        connection.exec_driver_sql(str(_SQLITE_LEDGER_INSERT), [c.params for c in kept])
    else:
        connection.execute(insert(ledger), [c.values for c in kept])
    inserted = insert_new_users(
        connection=connection, lines=(kept[0].line, kept[-1].line), source=source
    )
    collided = [c for c in kept if c.values["email"] not in inserted]
    present = _sort_out_collisions(connection=connection, collided=collided, rejects=rejects)
    return BatchResult(len(kept) - len(collided), present, rejects)


def _drop_repeated_rows(
    *, connection: Connection, batch: list[Candidate], rejects: list[Reject]
) -> list[Candidate]:
    """The rows whose email (and id) no earlier row of the file had.

    Only this connection writes the ledger, so looking first is exact.
    """
    emails = [c.values["email"] for c in batch]
    ids = [c.values["id"] for c in batch if c.has_id]
    first_email: dict[str, int] = {
        email: line
        for email, line in connection.execute(
            select(ledger.c.email, ledger.c.line).where(ledger.c.email.in_(emails))
        )
    }
    first_id: dict[uuid.UUID, int] = {}
    if ids:
        if not connection.info.get(_ledger_id_index.name):
            _ledger_id_index.create(connection)
            connection.info[_ledger_id_index.name] = True
        first_id = {
            user_id: line
            for user_id, line in connection.execute(
                select(ledger.c.id, ledger.c.line).where(ledger.c.id.in_(ids))
            )
        }
    kept = []
    for candidate in batch:
        email, user_id = candidate.values["email"], candidate.values["id"]
        if email in first_email:
            reason = f"the same email as line {first_email[email]}"
        elif candidate.has_id and user_id in first_id:
            reason = f"the same id as line {first_id[user_id]}"
        else:
            first_email[email] = candidate.line
            first_id[user_id] = candidate.line
            kept.append(candidate)
            continue
        rejects.append(Reject(candidate.line, "duplicate_in_file", reason, candidate.raw))
    return kept


def insert_new_users(
    *, connection: Connection, lines: tuple[int, int], source: ChangeSource
) -> set[str]:
    """Insert the ledger's rows of `lines` (first, last) whose email and id
    are free, in line order, and their changes; returns the emails inserted.

    The unique indexes decide: PostgreSQL and SQLite skip a colliding row
    (ON CONFLICT DO NOTHING), MariaDB/MySQL too (INSERT IGNORE; the rows
    are valid, so a duplicate key is the only thing it can ignore).

    MariaDB first leaves out the rows whose email or id is already taken
    (an anti-join on the unique indexes): INSERT IGNORE writes a colliding
    row into the indexes before the duplicate key is found, then undoes
    it. Importing 200,000 users again, all present, took 109 s and had the
    server write 543 MB; with the anti-join 56 s and 116 MB (the ledger,
    ANALYZE; load average 4-5); at a million, 26 GB before, 336 MB after
    (docs/performance.md). IGNORE stays for a row taken by another writer
    meanwhile.
    """
    rows = (
        select(*(ledger.c[name] for name in COLUMNS))
        .where(ledger.c.line.between(*lines))
        .order_by(ledger.c.line)
    )
    statement: Insert
    if connection.dialect.name == "postgresql":
        statement = postgresql.insert(users).from_select(COLUMNS, rows).on_conflict_do_nothing()
    elif connection.dialect.name == "sqlite":
        statement = sqlite.insert(users).from_select(COLUMNS, rows).on_conflict_do_nothing()
    else:
        free = rows.where(
            ~exists().where(users.c.email == ledger.c.email),
            ~exists().where(users.c.id == ledger.c.id),
        )
        statement = insert(users).prefix_with("IGNORE").from_select(COLUMNS, free)
    inserted = [
        dict(zip(COLUMNS, row, strict=True))
        for row in connection.execute(statement.returning(*(users.c[name] for name in COLUMNS)))
    ]
    inserted.sort(key=lambda values: values["created_at"])
    now = datetime.now(UTC)  # the change is the import, whatever created_at the file gave
    changes.append_sync(
        connection,
        [changes.created_row(source, values, to_record(values), at=now) for values in inserted],
    )
    return {values["email"] for values in inserted}


def _sort_out_collisions(
    *, connection: Connection, collided: list[Candidate], rejects: list[Reject]
) -> int:
    """Count the rows already present; reject the others. Returns the count."""
    if not collided:
        return 0
    emails = [c.values["email"] for c in collided]
    ids = [c.values["id"] for c in collided if c.has_id]
    condition: ColumnElement[bool] = users.c.email.in_(emails)
    if ids:
        condition = or_(condition, users.c.id.in_(ids))
    existing = connection.execute(
        select(users.c.id, *(users.c[name] for name in EDITABLE_FIELDS)).where(condition)
    ).all()
    by_email = {row.email: row for row in existing}
    by_id = {row.id: row for row in existing}
    present = 0
    for candidate in collided:
        values = candidate.values
        owner = by_email.get(values["email"])
        if owner is not None:
            same_id = not candidate.has_id or owner.id == values["id"]
            different = [name for name in EDITABLE_FIELDS if getattr(owner, name) != values[name]]
            if same_id and not different:
                present += 1
                continue
            differs = "id" if not same_id else " and ".join(different)
            code, reason = "email_taken", f"a user with this email exists, with another {differs}"
        elif candidate.has_id and values["id"] in by_id:
            code, reason = "id_taken", "a user with this id exists, with another email"
        else:
            code, reason = "conflict", "collided with a change made meanwhile; import again"
        rejects.append(Reject(candidate.line, code, reason, candidate.raw))
    return present


# --- import ---------------------------------------------------------------


@dataclass
class ImportSummary:
    imported: int = 0
    already_present: int = 0
    rejected: int = 0
    elapsed: float = 0.0

    @property
    def rows(self) -> int:
        return self.imported + self.already_present + self.rejected

    def __str__(self) -> str:
        rate = self.rows / self.elapsed if self.elapsed else 0.0
        return (
            f"imported {self.imported}, already present {self.already_present}, "
            f"rejected {self.rejected} of {self.rows} rows "
            f"in {self.elapsed:.1f} s ({rate:,.0f} rows/s)"
        )


def import_rows(
    *,
    load: BulkLoad,
    rows: Iterable[Candidate | Reject],
    rejects: RejectWriter,
    batch_size: int = DEFAULT_BATCH_SIZE,
    source: ChangeSource = IMPORT_SOURCE,
) -> ImportSummary:
    """Write `rows` in batches of `batch_size`, each in `load.batch()`: its
    own transaction, or (SQLite) a part of the load's one transaction (the
    users and their changes, caller `import`, the run's id as request id)."""
    connection = load.connection
    if not 1 <= batch_size <= BATCH_SIZE_MAX:
        raise ValueError(f"batch size must be from 1 to {BATCH_SIZE_MAX}")
    summary = ImportSummary()
    batch: list[Candidate] = []
    refused: list[Reject] = []

    def flush() -> None:
        if batch:
            with load.batch():
                result = write_batch(connection=connection, batch=batch, source=source)
            summary.imported += result.imported
            summary.already_present += result.already_present
            refused.extend(result.rejects)
        rejects.write(refused)
        summary.rejected += len(refused)
        batch.clear()
        refused.clear()
        gc.collect()

    with _collect_once_per_batch():
        for row in rows:
            if isinstance(row, Reject):
                refused.append(row)
            else:
                batch.append(row)
            if len(batch) + len(refused) >= batch_size:
                flush()
        flush()
    return summary


@contextmanager
def _ledger_table(connection: Connection) -> Iterator[None]:
    """The ledger, for one run. On SQLite it lives in the temporary database,
    whose page cache is 2 MiB unless asked: it gets 256 MiB for the run."""
    sqlite = connection.dialect.name == "sqlite"
    connection.info.pop(_ledger_id_index.name, None)
    with connection.begin():
        connection.execute(DropTable(ledger, if_exists=True))
        ledger.create(connection)
        if sqlite:
            cache_size = int(connection.exec_driver_sql("PRAGMA temp.cache_size").scalar_one())
            connection.exec_driver_sql("PRAGMA temp.cache_size=-262144")
    try:
        yield
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.info.pop(_ledger_id_index.name, None)
        with connection.begin():
            connection.execute(DropTable(ledger, if_exists=True))
            if sqlite:
                connection.exec_driver_sql(f"PRAGMA temp.cache_size={cache_size}")


def import_file(
    engine: Engine,
    path: Path,
    *,
    fmt: Format | None = None,
    rejects_path: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 0,
    progress: bool = True,
    raw: bool = False,
) -> tuple[ImportSummary, Path]:
    """Import `path` into the database; returns the summary and where rejects
    went. The rejects file is written only when there are rejects (then
    whole, see safe_output_file); it may be neither the input nor the database.
    """
    fmt = fmt or format_of(path)
    rejects_path = rejects_path or default_rejects_path(path, fmt)
    protected = {path: "the file being imported", **database_files(engine)}
    started = time.perf_counter()
    with (
        path.open("rb") as stream,
        safe_output_file(
            rejects_path,
            protected=protected,
            mode="w",
            encoding="utf-8",
            errors="surrogateescape",
            newline="",
        ) as rejects_file,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc="import",
            disable=not progress,
        ) as bar,
    ):
        lines = _lines(stream, bar)
        source = Source(lines, fmt, datetime.now(UTC), engine.dialect.name, raw=raw)
        rejects = RejectWriter(rejects_file.stream, fmt, source.columns, raw=raw)
        with engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            # Rebuilding the indexes pays when the file brings more rows
            # than the table has. A row takes 32 bytes or more, so this
            # guesses high: hence twice. (Importing a million users again,
            # all already present, rebuilt them for nothing: 670 MB written.)
            rebuild = path.stat().st_size // 32 >= 2 * user_count(connection)
            with (
                _ledger_table(connection),
                bulk_load(connection, rebuild_indexes=rebuild, keep_unique=True) as load,
            ):
                summary = import_rows(
                    load=load,
                    rows=source.rows(workers=workers),
                    rejects=rejects,
                    batch_size=batch_size,
                    source=ChangeSource(IMPORT_SOURCE.caller, f"import-{uuid.uuid4().hex}"),
                )
        rejects_file.keep = summary.rejected > 0
    summary.elapsed = time.perf_counter() - started
    return summary, rejects_path


# --- export ---------------------------------------------------------------

EXPORT_ORDER = SortOrder("created_at", descending=False)


@contextmanager
def _read_snapshot(connection: Connection) -> Iterator[None]:
    """One read transaction: every page sees the same database."""
    if connection.dialect.name == "sqlite":
        # The service's SQLite connections open no transaction for readers
        # (see db.py): open one, deferred, so the first read fixes the snapshot.
        with connection.begin():
            connection.exec_driver_sql("BEGIN")
            yield
    else:
        connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield


def export_users(
    *,
    connection: Connection,
    out: IO[bytes],
    fmt: Format = "jsonl",
    page_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    raw: bool = False,
) -> int:
    """Write every user to `out` in (created_at, id) order; returns how many.

    Each page is one statement: the users after the last one written, by
    the (created_at, id) index, at most `page_size` of them. CSV cells that
    a spreadsheet would run get a leading quote, unless `raw`.
    """
    dialect = connection.dialect.name
    written = 0
    with _read_snapshot(connection):
        total = connection.execute(select(func.count()).select_from(users)).scalar_one()
        with tqdm(total=total, unit="users", desc="export", disable=not progress) as bar:
            if fmt == "csv":
                out.write((",".join(COLUMNS) + "\n").encode())
            after: tuple[Any, uuid.UUID] | None = None
            while True:
                statement = select(users).order_by(*EXPORT_ORDER.order_by()).limit(page_size)
                if after is not None:
                    statement = statement.where(EXPORT_ORDER.after(after, dialect))
                records = []
                for row in connection.execute(statement):
                    records.append(to_record(row._mapping))
                    after = (row.created_at, row.id)
                out.write(_encode(records, fmt, raw=raw))
                written += len(records)
                bar.update(len(records))
                if len(records) < page_size:
                    return written


def export_file(
    engine: Engine,
    path: Path,
    *,
    fmt: Format = "jsonl",
    page_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    raw: bool = False,
) -> int:
    """Write every user to `path`, whole or not at all (see safe_output_file;
    never over the database); returns how many."""
    with (
        safe_output_file(path, protected=database_files(engine)) as output,
        engine.connect() as connection,
    ):
        return export_users(
            connection=connection,
            out=output.stream,
            fmt=fmt,
            page_size=page_size,
            progress=progress,
            raw=raw,
        )


def _encode(records: list[dict[str, Any]], fmt: Format, *, raw: bool) -> bytes:
    """JSON Lines (strings need no quoting there), or CSV rows."""
    if fmt == "jsonl":
        return b"".join(orjson.dumps(record) + b"\n" for record in records)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    rows = ([record[name] for name in COLUMNS] for record in records)
    writer.writerows(rows if raw else map(_quote_text_formulas, rows))
    return text.getvalue().encode()
