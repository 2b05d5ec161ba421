"""What checking RATE_LIMITS costs a GET, as paired blocks in one process.

Two apps on one database, one without rate limits and one giving the
caller `bench` a limit it never reaches (every request checked and
counted), take turns at blocks of `GET /users/{id}` (off, on; then on,
off; ...). The median of the paired block differences is steadier on a
shared machine than separate benchmarks.inprocess runs, since both apps
see the same load at nearly the same moment (docs/performance.md, "Rate
limits"):

    BENCH_DATABASES=sqlite python -m benchmarks.rate_limit_pairs
    PAIR_BLOCKS=20 PAIR_SIZE=500 BENCH_DATABASES=postgresql python -m benchmarks.rate_limit_pairs
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.databases import backends
from benchmarks.inprocess import API_KEY, SEEDED, call, measure, seeded_database
from users_service.main import create_app
from users_service.settings import load_settings

BLOCKS = int(os.environ.get("PAIR_BLOCKS", "12"))
SIZE = int(os.environ.get("PAIR_SIZE", "1000"))
LIMIT = os.environ.get("BENCH_RATE_LIMITS", "bench:100000")


def app_on(url: str, rate_limits: str) -> Any:
    settings = load_settings(
        database_url=url,
        environment="production",
        api_keys=f"bench:{API_KEY}",
        cursor_secret=secrets.token_hex(16),
        log_level="WARNING",
        rate_limits=rate_limits,
    )
    return create_app(settings)


async def blocks(url: str, ids: list[str]) -> tuple[list[float], list[float]]:
    """Each app's block medians (µs), in the order the blocks ran."""
    off, on = app_on(url, ""), app_on(url, LIMIT)
    medians: dict[int, list[float]] = {id(off): [], id(on): []}

    async def block(app: Any) -> float:
        times = await measure(lambda n: call(app, "GET", f"/users/{ids[n % len(ids)]}"), SIZE)
        return statistics.median(times)

    async with off.router.lifespan_context(off), on.router.lifespan_context(on):
        await block(off)  # warm-up, not counted
        await block(on)
        for number in range(BLOCKS):
            for app in (off, on) if number % 2 == 0 else (on, off):
                medians[id(app)].append(await block(app))
    return medians[id(off)], medians[id(on)]


def main() -> int:
    print(f"# {BLOCKS} paired blocks of {SIZE} GET /users/{{id}}; {SEEDED:,} users; {LIMIT!r}")
    with tempfile.TemporaryDirectory(prefix="users-rate-pairs-") as work_dir:
        for backend in backends():
            url, ids = seeded_database(backend, Path(work_dir))
            offs, ons = asyncio.run(blocks(url, ids))
            differences = [on - off for off, on in zip(offs, ons, strict=True)]
            off_median, difference = statistics.median(offs), statistics.median(differences)
            print(
                f"{backend}: off {off_median:.1f} µs, on {statistics.median(ons):.1f} µs, "
                f"paired difference {difference:+.2f} µs ({100 * difference / off_median:+.1f}%); "
                f"blocks: {' '.join(f'{d:+.1f}' for d in differences)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
