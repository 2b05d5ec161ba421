"""Two real server processes sharing one Redis hold one rate limit between them."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.databases import create_fresh_database, migrate
from tests.helpers import WRITER, WRITER_KEY
from tests.redis_servers import shared_redis_url, unique_prefix
from tests.server import running_server


def test_two_servers_sharing_a_redis_refuse_what_one_limit_allows_beyond_its_rate(
    backend: str, tmp_path: Path
) -> None:
    url = create_fresh_database(backend, tmp_path, "_rate_shared")
    migrate(url)
    settings = {
        "API_KEYS": f"writer:{WRITER_KEY}",
        # 6 requests in any 30 s: the test's requests all fall in one window
        # however slow the machine; each server alone would allow 6.
        "RATE_LIMITS": "writer:0.2:6",
        "RATE_LIMIT_STORAGE_URL": shared_redis_url(),
        "RATE_LIMIT_KEY_PREFIX": unique_prefix(),
    }
    with (
        running_server(url, tmp_path / "one.log", settings) as one,
        running_server(url, tmp_path / "two.log", settings) as two,
    ):
        servers = [one.base_url, two.base_url] * 4
        answers = [httpx.get(f"{base}/users", headers=WRITER) for base in servers]

    assert [answer.status_code for answer in answers] == [200] * 6 + [429, 429]
    for refused in answers[6:]:
        assert refused.json()["code"] == "rate_limited"
        assert refused.headers["retry-after"].isdigit()
