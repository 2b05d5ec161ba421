"""Three replicas of the service behind HAProxy, run from deploy/haproxy.cfg.

HAProxy health-checks each replica's /readyz and takes one that fails out
of the rotation; a connection refused, or a request that got no answer at
all, is sent to another replica (`retry-on conn-failure empty-response`).
The replicas share one database of the test's own on the suite's
PostgreSQL.

- Rolling restart (SIGTERM one replica, start it again, wait until HAProxy
  has it back, then the next) under steady GET, POST and PATCH load from
  plain HTTP callers that never retry: not one failed request.
- SIGKILL of one replica under creates through the Python client: no
  failure, no user twice.
- Requests per second through HAProxy against one replica direct (wrk).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, pool, select

from benchmarks.wrk import run_wrk
from tests.databases import configured_urls, create_fresh_database, migrate
from tests.server import (
    REPO_ROOT,
    SERVE_COMMAND,
    RunningServer,
    free_port,
    service_env,
    wait_until_healthy,
)
from tests.topology import HAProxy, PlainLoad, haproxy, new_user
from users_service.models import users
from users_service.settings import load_settings
from users_service_client import NewUser, RetryPolicy, UsersClient

pytestmark = pytest.mark.skipif(
    "postgresql" not in configured_urls() or shutil.which("haproxy") is None,
    reason="needs haproxy and a PostgreSQL in TEST_DATABASE_URLS",
)

REPLICAS = 3
SERVER_ENV = {
    "DB_POOL_SIZE": "6",
    "MAX_REQUESTS_IN_FLIGHT_PER_CALLER": "0",
    # A create whose replica was SIGKILLed between claiming its key and
    # writing leaves a claim no process finishes: a retry takes it over
    # after this long (safely: claims are fenced). The client's retries,
    # 409 idempotency_key_in_use with Retry-After: 1 each, outlast it.
    "IDEMPOTENCY_IN_FLIGHT_TIMEOUT_SECONDS": "3",
    "SHUTDOWN_GRACE_SECONDS": "20",
}
CLIENT_RETRIES = RetryPolicy(attempts=8)


@dataclass
class Replicas:
    database_url: str
    root: Path
    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: Counter[int] = field(default_factory=Counter)

    def start(self, n: int) -> None:
        self.starts[n] += 1
        env = service_env(
            DATABASE_URL=self.database_url,
            HOST="127.0.0.1",
            PORT=str(self.ports[n]),
            ENVIRONMENT="test",
            **SERVER_ENV,
        )
        log_path = self.root / f"replica{n}-{self.starts[n]}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                SERVE_COMMAND, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes[n] = process
        wait_until_healthy(RunningServer(process, f"http://127.0.0.1:{self.ports[n]}", log_path))

    def terminate(self, n: int) -> int:
        """SIGTERM, and the exit code once it has finished its requests."""
        process = self.processes[n]
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=60)

    def kill(self, n: int) -> None:
        self.processes[n].kill()
        self.processes[n].wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.root.glob("*.log"))


@dataclass
class Topology:
    replicas: Replicas
    balancer: HAProxy


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    root = tmp_path_factory.mktemp("haproxy")
    url = create_fresh_database("postgresql", root, "_haproxy")
    migrate(url)
    replicas = Replicas(url, root, [free_port() for _ in range(REPLICAS)])
    try:
        for n in range(REPLICAS):
            replicas.start(n)
        with haproxy(replicas.ports) as balancer:
            for n in range(REPLICAS):
                balancer.wait_until(f"app{n + 1}", "UP")
            yield Topology(replicas, balancer)
    finally:
        replicas.stop_all()


def test_rolling_restart_under_load_fails_no_request_of_callers_that_never_retry(
    topology: Topology,
) -> None:
    balancer, replicas = topology.balancer, topology.replicas
    user = httpx.post(f"{balancer.url}/users", json=new_user(), timeout=30).json()
    load = PlainLoad(balancer.url, user["id"])
    out_for: list[float] = []
    with load.running(callers=6):
        time.sleep(1.0)
        for n in range(REPLICAS):
            stopped = time.monotonic()
            assert replicas.terminate(n) == 0
            replicas.start(n)
            balancer.wait_until(f"app{n + 1}", "UP")
            out_for.append(time.monotonic() - stopped)
        time.sleep(1.0)

    failures = load.errors + [
        f"{kind} {r.status_code}: {r.text[:200]}" for _, kind, r in load.answers if not r.is_success
    ]
    answered = len(load.answers)
    print(
        f"\nrolling restart of {REPLICAS} replicas under load: {answered} requests "
        f"{load.statuses()}, failed {len(failures)}; each replica out for "
        + ", ".join(f"{seconds:.1f}" for seconds in out_for)
        + " s"
    )
    assert failures == []
    assert answered > 100  # the load ran throughout
    assert "unhandled error" not in replicas.logs()


def test_sigkill_of_a_replica_under_creates_costs_the_python_client_nothing(
    topology: Topology,
) -> None:
    balancer, replicas = topology.balancer, topology.replicas
    acknowledged: list[tuple[str, str]] = []  # (user id, email)
    failures: list[str] = []
    stop = threading.Event()

    def write(worker: int) -> None:
        with UsersClient(balancer.url, retry=CLIENT_RETRIES, timeout=60) as client:
            while not stop.is_set():
                email = f"killed-{worker}-{uuid.uuid4().hex}@example.com"
                try:
                    user = client.create_user(
                        **NewUser(name=f"Writer {worker}", email=email, age=50)
                    )
                except Exception as error:
                    failures.append(repr(error))
                    continue
                acknowledged.append((str(user.id), email))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        killed_at = time.monotonic()
        replicas.kill(1)
        out_after = balancer.wait_until("app2", "DOWN")
        time.sleep(2.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    replicas.start(1)
    balancer.wait_until("app2", "UP")

    engine = create_engine(
        load_settings(database_url=replicas.database_url).sqlalchemy_url,
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        killed = users.c.email.like("killed-%")
        emails = connection.execute(select(users.c.email).where(killed))
        stored = Counter(row.email for row in emails)
        total = connection.execute(
            select(func.count()).select_from(users).where(killed)
        ).scalar_one()
    engine.dispose()
    duplicated = [email for email, count in stored.items() if count > 1]
    missing = [email for _, email in acknowledged if email not in stored]
    print(
        f"\nSIGKILL of one of {REPLICAS} replicas under 6 writers: {len(acknowledged)} creates "
        f"acknowledged, failed {len(failures)}, duplicated {len(duplicated)}, lost "
        f"{len(missing)}; HAProxy took it out {out_after:.2f} s after the kill"
        f" ({time.monotonic() - killed_at:.1f} s ago)"
    )
    assert failures == []
    assert duplicated == [] and missing == []
    # Every user there was acknowledged: no create ran twice, none ran unseen.
    assert total == len(acknowledged)


def test_requests_per_second_through_haproxy_and_to_one_replica_direct(
    topology: Topology,
) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed: apt-get install wrk")
    balancer, replicas = topology.balancer, topology.replicas
    user = httpx.post(f"{balancer.url}/users", json=new_user(), timeout=30).json()
    path = f"/users/{user['id']}"
    figures = {}
    for name, base in (
        ("one replica direct", f"http://127.0.0.1:{replicas.ports[0]}"),
        ("HAProxy, 3 replicas", balancer.url),
    ):
        result = run_wrk(f"{base}{path}", connections=32, seconds=4, threads=2)
        assert result.non_2xx == 0 and result.socket_errors == 0
        figures[name] = result
    print(
        f"\nGET {{id}}, wrk 32 connections 4 s, {os.cpu_count()} shared cores: "
        + "; ".join(
            f"{name}: {result.requests_per_second:.0f} rps, p99 {result.p99_ms:.1f} ms"
            for name, result in figures.items()
        )
    )
