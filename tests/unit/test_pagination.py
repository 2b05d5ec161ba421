"""Cursors: signed, bound to their sort and filters, and checked field by field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from tests.helpers import forged_cursor
from users_service.pagination import CursorCodec, InvalidCursor, SortOrder
from users_service.settings import DEVELOPMENT_CURSOR_SECRET

CONTEXT = "email=None|name=None"
USER_ID = uuid.uuid4()


@pytest.mark.parametrize(
    ("sort", "value"),
    [
        ("created_at", datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=UTC)),
        ("-name", "Ada Lovelace"),
        ("email", "ada@example.com"),
        ("age", 36),
    ],
)
def test_a_cursor_gives_back_the_key_it_was_made_with(sort: str, value: object) -> None:
    codec = CursorCodec("s3cret")
    order = SortOrder.parse(sort)

    cursor = codec.encode(order, CONTEXT, (value, USER_ID))

    assert codec.decode(cursor, order, CONTEXT) == (value, USER_ID)


@pytest.mark.parametrize(
    ("sort", "payload"),
    [
        ("created_at", {"value": 1, "id": str(USER_ID)}),
        ("created_at", [1700000000, str(USER_ID)]),
        ("created_at", ["2026-11-30T01:02:03", str(USER_ID)]),  # no offset
        ("created_at", ["9999-12-31T23:59:59.999999-23:59", str(USER_ID)]),
        ("created_at", ["not a time", str(USER_ID)]),
        ("name", ["Ada", "not-a-uuid"]),
        ("name", ["Ada", 12]),
        ("name", ["Ada\x00", str(USER_ID)]),
        ("name", [7, str(USER_ID)]),
        ("age", ["36", str(USER_ID)]),
        ("age", [True, str(USER_ID)]),
        ("age", [10**30, str(USER_ID)]),
        ("age", [36]),
        ("age", [36, str(USER_ID), "extra"]),
        ("email", "just text"),
        ("email", None),
    ],
)
def test_a_validly_signed_cursor_with_a_malformed_key_is_refused(
    sort: str, payload: object
) -> None:
    order = SortOrder.parse(sort)
    codec = CursorCodec(DEVELOPMENT_CURSOR_SECRET)

    with pytest.raises(InvalidCursor):
        codec.decode(forged_cursor(payload, order, CONTEXT), order, CONTEXT)


def test_a_cursor_from_another_secret_sort_or_filters_is_refused() -> None:
    order = SortOrder.parse("name")
    cursor = CursorCodec("one").encode(order, CONTEXT, ("Ada", USER_ID))

    for codec, sort, context in [
        (CursorCodec("two"), "name", CONTEXT),
        (CursorCodec("one"), "-name", CONTEXT),
        (CursorCodec("one"), "name", CONTEXT + "|min_age=3"),
    ]:
        with pytest.raises(InvalidCursor):
            codec.decode(cursor, SortOrder.parse(sort), context)


def test_a_cursor_signed_before_a_rotation_verifies_while_its_secret_is_listed() -> None:
    order = SortOrder.parse("name")
    before = CursorCodec("old").encode(order, CONTEXT, ("Ada", USER_ID))
    during = CursorCodec(["new", "old"])
    after = CursorCodec("new")

    assert during.decode(before, order, CONTEXT) == ("Ada", USER_ID)
    fresh = during.encode(order, CONTEXT, ("Ada", USER_ID))
    assert after.decode(fresh, order, CONTEXT) == ("Ada", USER_ID)  # the first signs
    with pytest.raises(InvalidCursor):
        after.decode(before, order, CONTEXT)
    with pytest.raises(InvalidCursor):
        CursorCodec("old").decode(fresh, order, CONTEXT)
