"""The schemas' character rules, checked against Unicode itself."""

from __future__ import annotations

import sys
import unicodedata

from users_service.models import has_forbidden_characters


def test_forbidden_characters_are_exactly_unicode_controls_and_surrogates() -> None:
    for code_point in range(sys.maxunicode + 1):
        char = chr(code_point)
        expected = unicodedata.category(char) in ("Cc", "Cs")
        assert has_forbidden_characters(f"a{char}b") is expected, hex(code_point)
