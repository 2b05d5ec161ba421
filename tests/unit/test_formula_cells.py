"""CSV cells a spreadsheet would run as formulas: quoted on the way out
(`quote_formula`), and every value given back exactly on the way in
(`unquote_formula`). The files themselves: tests/api/test_transfer.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from users_service.transfer import FORMULA_STARTS, quote_formula, unquote_formula

# Any text, and text made mostly of the characters the rule looks at.
CELLS = st.text() | st.text(alphabet=st.sampled_from([*FORMULA_STARTS, "'", "a", "1", " "]))


@given(CELLS)
def test_every_value_comes_back_from_its_cell_exactly(value):
    assert unquote_formula(quote_formula(value)) == value


@given(CELLS)
def test_no_cell_starts_like_a_formula(value):
    assert not quote_formula(value).startswith(FORMULA_STARTS)


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@SUM(1)", "'@SUM(1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("'=1", "''=1"),
        ("'' quoted", "''' quoted"),
        ("'", "'"),
        ("'a", "'a"),
        ("O'Brien", "O'Brien"),
        (" =1", " =1"),
        ("", ""),
    ],
)
def test_only_formulas_and_quotes_before_them_get_a_quote(value, cell):
    assert quote_formula(value) == cell
    assert unquote_formula(cell) == value
