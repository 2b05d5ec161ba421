"""The schemas' character rules, checked against Unicode itself, and the
plain-address shortcut, checked against email-validator."""

from __future__ import annotations

import random
import sys
import unicodedata

import pytest
from email_validator import validate_email

from users_service.models import has_forbidden_characters, is_plain_address, normalize_email


def test_forbidden_characters_are_exactly_unicode_controls_and_surrogates() -> None:
    for code_point in range(sys.maxunicode + 1):
        char = chr(code_point)
        expected = unicodedata.category(char) in ("Cc", "Cs")
        assert has_forbidden_characters(f"a{char}b") is expected, hex(code_point)


def _random_address(rng: random.Random) -> str:
    """An address-like string, biased to the edges of the plain-address rules."""
    pieces = ["a", "Z", "9", "_", "+", "-", ".", "..", "xn--", "ab--", "--", "é", "!", "'"]
    labels = ["example", "EXAMPLE", "x", "a-b", "-a", "a-", "xn--p1ai", "9", "c0m", "x" * 63]
    local = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
    if rng.random() < 0.05:
        local = "a" * rng.randint(60, 70)
    domain = ".".join(rng.choice(labels) for _ in range(rng.randint(1, 4)))
    tld = rng.choice(["com", "ORG", "io", "c0m", "1", "test", "local", "onion", "arpa", "x" * 64])
    return f"{local}@{domain}.{tld}" if rng.random() < 0.9 else f"{local}@{domain}"


def test_a_plain_address_is_what_email_validator_makes_of_it() -> None:
    rng = random.Random(20261130)
    plain = 0
    for _ in range(20_000):
        address = _random_address(rng)
        if not is_plain_address(address):
            continue
        plain += 1
        checked = validate_email(address, check_deliverability=False, allow_display_name=False)
        assert checked.normalized.lower() == address.lower() == normalize_email(address), address
    # Both ways are exercised: a good share of the random addresses is plain.
    assert 300 < plain < 19_000


def test_addresses_that_are_not_plain_get_email_validators_full_check() -> None:
    for address in [
        "a@b.test",
        "a@xn--p1ai.com",
        "a@ab--c.com",
        "a..b@example.com",
        "a@example.c0m",
        "a@" + "x" * 64 + ".com",
        "a" * 65 + "@example.com",
        "üser@example.com",
        "a@localhost",
    ]:
        assert not is_plain_address(address), address
    assert normalize_email("Üser@EXAMPLE.com") == "üser@example.com"
    for address in ["a@b.test", "a..b@example.com", "a@localhost"]:
        with pytest.raises(ValueError):
            normalize_email(address)
