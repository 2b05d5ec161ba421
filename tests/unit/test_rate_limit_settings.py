"""RATE_LIMITS and RATE_LIMIT_STORAGE_URL: what they accept, and refusals that name them."""

from __future__ import annotations

import re

import pytest

from tests.unit.test_settings import no_outside_configuration  # noqa: F401 - autouse
from users_service.settings import RateLimit, SettingsError, load_settings


def test_rate_limits_are_caller_rate_and_burst_with_a_default() -> None:
    settings = load_settings(rate_limits=" alpha:10 , beta:10:30,gamma:0.5, *:100:150")

    assert settings.rate_limit_table == {
        "alpha": RateLimit(10, 10),  # burst defaults to one second's worth
        "beta": RateLimit(10, 30),
        "gamma": RateLimit(0.5, 1),
        "*": RateLimit(100, 150),
    }
    windows = {caller: limit.window_seconds for caller, limit in settings.rate_limit_table.items()}
    # burst requests in any window of burst/rate seconds, rounded up to whole seconds
    assert windows == {"alpha": 1, "beta": 3, "gamma": 2, "*": 2}


def test_no_rate_limits_by_default() -> None:
    assert load_settings().rate_limit_table == {}


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("alpha", "entry 1: it must be caller:requests_per_second[:burst]"),
        ("alpha:1,beta:1:2:3", "entry 2: it must be"),
        ("alpha:0", "entry 1: requests_per_second must be a number over 0"),
        ("alpha:fast", "entry 1: requests_per_second must be a number over 0"),
        ("alpha:nan", "entry 1: requests_per_second must be a number over 0"),
        ("alpha:10:0", "entry 1: requests_per_second must be a number over 0, burst"),
        ("alpha:10:1.5", "entry 1: requests_per_second must be a number over 0, burst"),
        ("al pha:1", "entry 1: the caller must be"),
        ("alpha:1,alpha:2", "entry 2: caller 'alpha' is listed twice"),
    ],
)
def test_a_malformed_rate_limit_is_refused_naming_the_setting_and_entry(
    setting: str, problem: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"RATE_LIMITS: {problem}")):
        load_settings(rate_limits=setting)


def test_the_rate_limit_storage_must_be_a_redis_url() -> None:
    assert load_settings(rate_limit_storage_url="redis://127.0.0.1:6379/0")
    with pytest.raises(SettingsError, match="RATE_LIMIT_STORAGE_URL: must be a Redis URL"):
        load_settings(rate_limit_storage_url="memcached://127.0.0.1:11211")
