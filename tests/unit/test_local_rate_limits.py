"""RATE_LIMITS counted in this process (api/ratelimit.py's LocalRates, GCRA):
`caller:rate:burst` is up to `burst` requests at once, then one every
1/rate seconds. A clock of our own makes the time; one test reads the real one."""

from __future__ import annotations

import time

from users_service.api.ratelimit import LocalRates
from users_service.settings import parse_rate_limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rates(setting: str, clock: Clock) -> LocalRates:
    return LocalRates(parse_rate_limits(setting), clock)


def test_a_burst_passes_then_one_every_interval() -> None:
    clock = Clock()
    limits = rates("writer:4:3", clock)  # one every 0.25 s, three at once

    assert [limits.retry_after("writer") for _ in range(3)] == [None, None, None]
    assert limits.retry_after("writer") == 1  # refused: 0.25 s to wait, rounded up
    assert limits.retry_after("writer") == 1  # and a refusal is not counted
    clock.now += 0.24
    assert limits.retry_after("writer") == 1
    clock.now += 0.01  # 1/rate after the burst
    assert limits.retry_after("writer") is None
    assert limits.retry_after("writer") == 1  # only one


def test_retry_after_is_the_whole_seconds_until_the_request_would_pass() -> None:
    clock = Clock()
    limits = rates("writer:0.25:3", clock)  # one every 4 s

    assert [limits.retry_after("writer") for _ in range(4)] == [None, None, None, 4]
    clock.now += 2.5
    assert limits.retry_after("writer") == 2  # 1.5 s left
    clock.now += 1.5
    assert limits.retry_after("writer") is None


def test_idle_time_gives_the_burst_back_at_the_rate_and_no_more() -> None:
    clock = Clock()
    limits = rates("writer:10:5", clock)

    assert [limits.retry_after("writer") for _ in range(6)] == [None] * 5 + [1]
    clock.now += 0.2  # two intervals: two requests
    assert [limits.retry_after("writer") for _ in range(3)] == [None, None, 1]
    clock.now += 60  # a long rest: a whole burst, not more
    assert [limits.retry_after("writer") for _ in range(6)] == [None] * 5 + [1]


def test_the_long_run_rate_is_the_configured_one() -> None:
    clock = Clock()
    limits = rates("writer:50:10", clock)
    passed = 0
    for _ in range(10_000):  # 10 s of a caller trying every millisecond
        clock.now += 0.001
        passed += limits.retry_after("writer") is None

    assert passed == 10 + 50 * 10 - 1  # the burst, then 50 a second (the last at 10 s not yet)


def test_unlisted_callers_each_get_the_default_or_no_limit() -> None:
    clock = Clock()
    with_default = rates("reader:1000,*:1:2", clock)
    assert [with_default.retry_after("writer") for _ in range(3)] == [None, None, 1]
    assert [with_default.retry_after("anonymous") for _ in range(3)] == [None, None, 1]  # its own
    assert [with_default.retry_after("reader") for _ in range(3)] == [None, None, None]

    without = rates("reader:1:1", clock)
    assert [without.retry_after("writer") for _ in range(100)] == [None] * 100
    assert [without.retry_after("reader") for _ in range(2)] == [None, 1]


def test_on_the_real_clock_one_more_passes_after_the_interval() -> None:
    limits = LocalRates(parse_rate_limits("writer:5:2"))  # time.monotonic, 0.2 s apart

    assert [limits.retry_after("writer") for _ in range(3)] == [None, None, 1]
    time.sleep(0.21)  # a second one would need 0.4 s: room for a slow machine
    assert [limits.retry_after("writer") for _ in range(2)] == [None, 1]
