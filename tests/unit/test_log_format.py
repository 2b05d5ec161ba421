"""users_service.logs: what a caller sends can never forge a log line."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from users_service.logs import (
    AccessLog,
    JSONFormatter,
    TextFormatter,
    escape_unprintable,
    text_value,
)
from users_service.settings import LogFormat

FORGED = "x\n2026-11-30T02:00:00.000Z INFO users_service.access DELETE {user_id} 204 caller=admin"
# Line breaks of every kind a viewer might honour, and terminal escapes.
UNPRINTABLE = ["\n", "\r", "\x1b", "\x00", "\x7f", "\x85", "\u2028", "\u2029", "\x0b", "\x0c"]


@pytest.mark.parametrize("char", UNPRINTABLE)
def test_escape_unprintable_leaves_one_line_of_printable_text(char: str) -> None:
    escaped = escape_unprintable(f"a{char}b")

    assert escaped == "a" + repr(char)[1:-1] + "b"
    assert escaped.isprintable() and len(escaped.splitlines()) == 1


def test_printable_text_and_plain_values_are_written_as_they_are() -> None:
    assert escape_unprintable("Grâce, 85 ans") == "Grâce, 85 ans"
    assert text_value("6d285d42-3bcb-4896-bfc8-8cd88223e05b") == (
        "6d285d42-3bcb-4896-bfc8-8cd88223e05b"
    )
    assert text_value("127.0.0.1:8000") == "127.0.0.1:8000"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("a b", '"a b"'),
        ("caller=admin", '"caller=admin"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("", '""'),
        (FORGED, '"' + FORGED.replace("\n", "\\n") + '"'),
    ],
)
def test_a_field_value_that_is_not_plain_is_quoted_and_escaped(value: str, written: str) -> None:
    assert text_value(value) == written


def record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    info = sys.exc_info() if exc_info else None
    return logging.LogRecord("users_service.test", logging.ERROR, __file__, 1, message, args, info)


def test_a_text_line_escapes_its_message_and_indents_its_traceback() -> None:
    try:
        raise ValueError(f"bad input {FORGED}\x1b[2J")
    except ValueError:
        line = TextFormatter().format(record("could not read %s", FORGED, exc_info=True))

    first, *rest = line.split("\n")
    assert first.endswith("could not read " + FORGED.replace("\n", "\\n"))
    assert rest and all(part.startswith("    ") for part in rest)
    assert "ValueError: bad input x" in line and "\x1b" not in line
    assert not [part for part in line.split("\n") if part.startswith("2026-11-30T02")]


def test_a_json_line_is_one_line_whatever_it_holds() -> None:
    try:
        raise ValueError(FORGED)
    except ValueError:
        line = JSONFormatter().format(record("%s\u2028\r", FORGED, exc_info=True))

    assert "\n" not in line and "\r" not in line
    parsed = json.loads(line)
    assert parsed["message"] == FORGED + "\u2028\r"
    assert FORGED in parsed["traceback"]


@pytest.mark.parametrize("log_format", [LogFormat.text, LogFormat.json])
def test_an_access_line_with_a_forged_user_id_and_forwarded_chain_is_one_line(
    log_format: LogFormat, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    access_log = AccessLog(log_format, enabled=True)

    access_log.write(
        request_id="r1",
        caller="anonymous",
        method="GET",
        route="/users/{user_id}",
        status=422,
        duration_ms=1.5,
        peer="127.0.0.1:5000",
        forwarded_for="203.0.113.7\r\n" + FORGED,
        user_id=FORGED,
    )
    access_log.flush()

    [line] = stderr.getvalue().splitlines()
    if log_format is LogFormat.json:
        parsed = json.loads(line)
        assert (parsed["user_id"], parsed["peer"]) == (FORGED, "127.0.0.1:5000")
        assert parsed["forwarded_for"] == "203.0.113.7\r\n" + FORGED
    else:
        assert " peer=127.0.0.1:5000 " in line
        assert line.endswith(" user_id=" + text_value(FORGED))
        assert ' forwarded_for="203.0.113.7\\r\\n' in line
