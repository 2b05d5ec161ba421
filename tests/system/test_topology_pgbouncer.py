"""The service behind PgBouncer in transaction mode (DB_POOLER=transaction).

A real PgBouncer, run from deploy/pgbouncer.ini with a server pool (3) far
smaller than the service's (8), in front of a database of the test's own on
the suite's PostgreSQL. Every unit of the service's work may land on
another server connection, so whatever outlives a transaction would break:
psycopg's server-side prepared statements (made after a statement's fifth
run), startup options (PgBouncer 1.18 refuses them), session `SET`s.

- Every route, idempotent retries, If-Match races and the statement
  timeout behave exactly as on a direct connection, well past the fifth run
  of each statement.
- PgBouncer restarted under load: 503 with Retry-After while it is down,
  then every request served again, never a 500.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.databases import configured_urls, create_fresh_database, migrate
from tests.helpers import race
from tests.server import RunningServer, running_server
from tests.topology import PgBouncer, PlainLoad, assert_unavailable, new_user, pgbouncer
from users_service.api.problems import STATEMENT_TIMEOUT_DETAIL
from users_service.settings import load_settings

pytestmark = pytest.mark.skipif(
    "postgresql" not in configured_urls(),
    reason="needs a PostgreSQL in TEST_DATABASE_URLS (PgBouncer sits in front of it)",
)

SERVICE_POOL = 8
BOUNCER_POOL = 3  # server connections: fewer than the service's pool
STATEMENT_TIMEOUT_MS = 2000
SERVER_ENV = {
    "DB_POOLER": "transaction",
    "DB_POOL_SIZE": str(SERVICE_POOL),
    "DB_WRITE_RESERVE": "2",
    "DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
    "DB_CONNECT_TIMEOUT_SECONDS": "2",
    "MAX_REQUESTS_IN_FLIGHT_PER_CALLER": "0",
}
# Each statement runs far more often than psycopg's prepare threshold (5).
ROUNDS = 12


@dataclass
class Topology:
    database_url: str  # direct, for the test's own checks
    bouncer: PgBouncer
    server: RunningServer


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    tmp_path = tmp_path_factory.mktemp("pgbouncer")
    direct = create_fresh_database("postgresql", tmp_path, "_pgbouncer")
    migrate(direct)
    url = make_url(direct)
    assert url.port is not None and url.database is not None
    with (
        pgbouncer(url.port, url.database, BOUNCER_POOL) as bouncer,
        running_server(bouncer.url, tmp_path / "server.log", SERVER_ENV) as server,
    ):
        yield Topology(direct, bouncer, server)


def test_every_route_behaves_through_pgbouncer_in_transaction_mode(
    topology: Topology, tmp_path: Path
) -> None:
    base = topology.server.base_url
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/readyz").status_code == 200

        # Creates, reads and replays, concurrently, many times over.
        def create_and_read(index: int) -> list[int]:
            body = new_user(name=f"Bouncer {index}")
            key = {"Idempotency-Key": uuid.uuid4().hex}
            created = httpx.post(f"{base}/users", json=body, headers=key, timeout=30)
            replayed = httpx.post(f"{base}/users", json=body, headers=key, timeout=30)
            reused = httpx.post(f"{base}/users", json=new_user(), headers=key, timeout=30)
            user_id = created.json().get("id")
            fetched = httpx.get(f"{base}/users/{user_id}", timeout=30)
            not_modified = httpx.get(
                f"{base}/users/{user_id}",
                headers={"If-None-Match": fetched.headers.get("etag", "")},
                timeout=30,
            )
            assert replayed.headers.get("idempotency-replayed") == "true"
            assert replayed.content == created.content
            return [
                created.status_code,
                replayed.status_code,
                reused.status_code,
                fetched.status_code,
                not_modified.status_code,
            ]

        with ThreadPoolExecutor(max_workers=SERVICE_POOL) as pool:
            results = list(pool.map(create_and_read, range(ROUNDS * 2)))
        assert results == [[201, 201, 422, 200, 304]] * (ROUNDS * 2)

        batch = client.post("/users/batch", json={"users": [new_user(), new_user()]})
        assert batch.status_code == 201, batch.text

        # Listing: sorted pages followed by cursor, a filter that may scan,
        # a count.
        seen: list[str] = []
        cursor = None
        for _ in range(ROUNDS):
            params: dict[str, str | int] = {"limit": 5, "sort": "-name"}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/users", params=params)
            assert page.status_code == 200, page.text
            seen += [user["id"] for user in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == ROUNDS * 2 + 2
        counted = client.get("/users", params={"name": "bouncer", "include_total": "true"})
        assert counted.status_code == 200 and counted.json()["total"] == ROUNDS * 2

        # Replace, update, If-Match race, delete.
        user = client.post("/users", json=new_user()).json()
        path = f"/users/{user['id']}"
        for round_ in range(ROUNDS):
            put = client.put(path, json=new_user(age=round_))
            assert put.status_code == 200, put.text
        version = client.get(path).headers["etag"]
        racers = race(
            SERVICE_POOL,
            lambda i: httpx.patch(
                f"{base}{path}", json={"age": 100 + i}, headers={"If-Match": version}, timeout=30
            ),
        )
        assert sorted(r.status_code for r in racers) == [200] + [412] * (SERVICE_POOL - 1)
        racing_email = new_user()
        creates = race(
            SERVICE_POOL,
            lambda i: httpx.post(f"{base}/users", json={**racing_email, "age": i}, timeout=30),
        )
        assert sorted(r.status_code for r in creates) == [201] + [409] * (SERVICE_POOL - 1)
        gone = client.delete(path, headers={"If-Match": client.get(path).headers["etag"]})
        assert gone.status_code == 204
        assert client.get(path).status_code == 404

        # The statement timeout holds, set in the transaction: a PATCH
        # waiting on a row the test locks is cancelled (503) after it.
        locked = client.post("/users", json=new_user()).json()
        direct = load_settings(database_url=topology.database_url).sqlalchemy_url
        with (
            psycopg.connect(direct.set(drivername="postgresql").render_as_string(False)) as holder,
            ThreadPoolExecutor(max_workers=1) as pool,
        ):
            holder.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (locked["id"],))
            started = time.monotonic()
            waiting: Future[httpx.Response] = pool.submit(
                client.patch, f"/users/{locked['id']}", json={"age": 99}
            )
            timed_out = waiting.result(timeout=60)
            waited = time.monotonic() - started
            holder.rollback()
        assert timed_out.status_code == 503, timed_out.text
        assert timed_out.json()["detail"] == STATEMENT_TIMEOUT_DETAIL
        # Not before the limit; and not much after it (slack for a busy machine).
        assert STATEMENT_TIMEOUT_MS / 1000 <= waited < STATEMENT_TIMEOUT_MS / 1000 + 8
        assert client.get(f"/users/{locked['id']}").json()["age"] == 30

    # Nothing the service did stayed on PgBouncer's server connections.
    with psycopg.connect(topology.bouncer.url) as leftover:
        for _ in range(BOUNCER_POOL * 2):
            cursor_ = leftover.execute("SHOW statement_timeout", prepare=False)
            assert cursor_.fetchone() == ("0",)
            leftover.rollback()
    assert "unhandled error" not in topology.server.log()
    assert "prepared statement" not in topology.server.log()

    # The same PgBouncer refuses the service's default connections (startup
    # options), which is why DB_POOLER exists: this test's PgBouncer does
    # enforce transaction pooling's limits.
    plain_env = {**SERVER_ENV, "DB_POOLER": "none"}
    with (
        running_server(topology.bouncer.url, tmp_path / "plain.log", plain_env) as plain,
        httpx.Client(base_url=plain.base_url, timeout=30) as plain_client,
    ):
        assert plain_client.get("/readyz").status_code == 503


def test_pgbouncer_restarted_under_load_gives_503_then_recovers_never_500(
    topology: Topology,
) -> None:
    base = topology.server.base_url
    user = httpx.post(f"{base}/users", json=new_user(), timeout=30).json()
    load = PlainLoad(base, user["id"])
    with load.running(callers=4):
        time.sleep(1.5)
        stopped_at = time.monotonic()
        topology.bouncer.stop()
        time.sleep(1.5)
        topology.bouncer.start()
        started_at = time.monotonic()
        # Long enough after the restart for every caller to be served again.
        time.sleep(4)

    statuses = Counter(response.status_code for _, _, response in load.answers)
    unavailable = [(at, r) for at, _, r in load.answers if r.status_code == 503]
    for _, response in unavailable:
        assert_unavailable(response)
    assert load.errors == []
    assert set(statuses) <= {200, 201, 503}, statuses
    assert unavailable, "PgBouncer was down 1.5 s under load: some request must have seen it"
    after = [r.status_code for at, _, r in load.answers if at > started_at + 1.0]
    assert after and set(after) <= {200, 201}, Counter(after)
    first_ok = min(
        (at for at, _, r in load.answers if at > started_at and r.status_code < 500),
        default=None,
    )
    assert first_ok is not None
    window = max(at for at, _ in unavailable) - min(at for at, _ in unavailable)
    assert "unhandled error" not in topology.server.log()
    print(
        f"\nPgBouncer restart under load: {len(load.answers)} answers {dict(statuses)}, "
        f"failed (5xx other than 503, transport errors): 0; 503s over {window:.2f} s "
        f"(PgBouncer down {started_at - stopped_at:.2f} s); first success "
        f"{(first_ok - started_at) * 1000:.0f} ms after it was back"
    )
