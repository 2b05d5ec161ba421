"""The production topology on one machine, for the system tests: throwaway
PostgreSQL clusters (a primary, a streaming standby), PgBouncer and HAProxy,
each a real process on free ports of 127.0.0.1, run from the configurations
committed under deploy/ with only addresses, ports and paths replaced
(`render`).

PostgreSQL and PgBouncer refuse to run as root: their tools run as
`postgres` when the tests run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, pool, text

from tests.databases import migrate
from tests.server import REPO_ROOT, free_port
from users_service.api.problems import STATEMENT_TIMEOUT_DETAIL
from users_service.settings import load_settings

POSTGRES_BIN = Path(os.environ.get("POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
DEPLOY = REPO_ROOT / "deploy"
AS_POSTGRES = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def render(template: Path, replacements: Mapping[str, str], target: Path) -> Path:
    """`template` with each key replaced by its value, written to `target`.
    Every key must occur: a deploy file that drifted from its test fails
    here rather than being silently tested with its production values."""
    content = template.read_text()
    for old, new in replacements.items():
        assert old in content, f"{template.name} no longer contains {old!r}"
        content = content.replace(old, new)
    target.write_text(content)
    return target


def owned_tmpdir(prefix: str) -> Path:
    """A new temporary directory that the PostgreSQL tools may write in."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
    return root


def run_as_postgres(*command: str, cwd: Path, timeout: float = 120) -> None:
    subprocess.run(
        [*AS_POSTGRES, *command], check=True, capture_output=True, timeout=timeout, cwd=cwd
    )


@dataclass
class ThrowawayPostgres:
    """A PostgreSQL cluster of the test's own: data, socket and log in `root`."""

    root: Path
    port: int
    name: str = "data"
    settings: list[str] = field(default_factory=list)  # extra `-c name=value`
    standbys: list[ThrowawayPostgres] = field(default_factory=list)  # standby_of's

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/users"

    @property
    def data(self) -> Path:
        return self.root / self.name

    def _run(self, *command: str) -> None:
        run_as_postgres(*command, cwd=self.root)

    def init(self) -> None:
        self._run(
            str(POSTGRES_BIN / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
                # fsync off: these clusters are killed as processes, never
                # as machines, and the OS keeps what was written.
                "-c fsync=off -c shared_buffers=16MB -c max_connections=40",
                *(f"-c {setting}" for setting in self.settings),
            ]
        )
        self._pg_ctl(
            "start", "-w", "-t", "60", "-l", str(self.root / f"{self.name}.log"), "-o", options
        )

    def stop(self, mode: str) -> None:
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def _postmaster(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
            return None
        return pid

    def is_running(self) -> bool:
        return self._postmaster() is not None

    def kill(self) -> None:
        """SIGKILL the postmaster and every process of the cluster at once:
        what a machine that dies does to it."""
        pid = self._postmaster()
        assert pid is not None, "the cluster is not running"
        children = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        for victim in (pid, *map(int, children)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)

    def promote(self) -> None:
        self._pg_ctl("promote", "-w", "-t", "60")

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(POSTGRES_BIN / "pg_ctl"), "--pgdata", str(self.data), *args)

    def create_database(self, name: str = "users") -> None:
        admin = create_engine(
            self.url.replace("/users", "/postgres"),
            poolclass=pool.NullPool,
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()

    def engine(self) -> Engine:
        """The test's own way into the cluster, beside the service."""
        return create_engine(
            load_settings(database_url=self.url).sqlalchemy_url, poolclass=pool.NullPool
        )


@contextmanager
def throwaway_postgres(prefix: str, *settings: str) -> Iterator[ThrowawayPostgres]:
    """A started cluster with a migrated, empty database `users`; removed after."""
    cluster = ThrowawayPostgres(owned_tmpdir(prefix), free_port(), settings=list(settings))
    try:
        cluster.init()
        cluster.start()
        cluster.create_database()
        migrate(cluster.url)
        yield cluster
    finally:
        for member in (cluster, *cluster.standbys):
            if member.is_running():
                member.stop("immediate")
        shutil.rmtree(cluster.root, ignore_errors=True)


def standby_of(primary: ThrowawayPostgres, name: str) -> ThrowawayPostgres:
    """A streaming standby of `primary`, made as deploy/standby.sh makes one
    (pg_basebackup -R), started, and caught up; its data beside the
    primary's."""
    standby = ThrowawayPostgres(primary.root, free_port(), name=name)
    run_as_postgres(
        "sh",
        str(DEPLOY / "standby.sh"),
        str(POSTGRES_BIN),
        f"host=127.0.0.1 port={primary.port} user=postgres application_name={name}",
        str(standby.data),
        cwd=primary.root,
    )
    primary.standbys.append(standby)
    standby.start()
    return standby


@dataclass
class PgBouncer:
    """PgBouncer from deploy/pgbouncer.ini, in front of `server_port`."""

    root: Path
    port: int
    server_port: int
    pool_size: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/users"

    def configure(self, database: str) -> None:
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        render(
            DEPLOY / "pgbouncer.ini",
            {
                "host=db1.internal port=5432 dbname=users": (
                    f"host=127.0.0.1 port={self.server_port} dbname={database}"
                ),
                "listen_addr = 0.0.0.0": "listen_addr = 127.0.0.1",
                "listen_port = 6432": f"listen_port = {self.port}",
                "/var/log/postgresql/pgbouncer.log": str(self.root / "pgbouncer.log"),
                "/run/postgresql/pgbouncer.pid": str(self.root / "pgbouncer.pid"),
                "auth_type = scram-sha-256": "auth_type = trust",
                "/etc/pgbouncer/userlist.txt": str(self.root / "userlist.txt"),
                "default_pool_size = 20": f"default_pool_size = {self.pool_size}",
            },
            self.root / "pgbouncer.ini",
        )
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*AS_POSTGRES, "pgbouncer", str(self.root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, what="PgBouncer", process=self.process)

    def stop(self) -> None:
        """SIGTERM: PgBouncer's immediate shutdown, every connection dropped."""
        if self.process is not None and self.process.poll() is None:
            # runuser passes the signal on to PgBouncer.
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def pgbouncer(server_port: int, database: str, pool_size: int) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(
        owned_tmpdir("users-service-pgbouncer-"), free_port(), server_port, pool_size
    )
    try:
        bouncer.configure(database)
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(bouncer.root, ignore_errors=True)


def wait_for_port(
    port: int, *, what: str, process: subprocess.Popen[bytes], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} not listening within {timeout} s")


def assert_unavailable(response: httpx.Response) -> None:
    """A 503 problem with Retry-After that says nothing of the database."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "service_unavailable"
    assert response.json()["detail"] != STATEMENT_TIMEOUT_DETAIL
    assert int(response.headers["retry-after"]) > 0
    assert "psycopg" not in response.text.lower() and "127.0.0.1" not in response.text


def new_email() -> str:
    return f"topology-{uuid.uuid4().hex[:16]}@example.com"


def new_user(**fields: Any) -> dict[str, Any]:
    return {"name": "Topology Test", "email": new_email(), "age": 30, **fields}


@dataclass
class HAProxy:
    """HAProxy from deploy/haproxy.cfg in front of `replica_ports`."""

    root: Path
    port: int
    replica_ports: list[int]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.root / "admin.sock"

    def configure(self) -> None:
        servers = {
            f"server app{n} 10.0.0.1{n}:8000": f"server app{n} 127.0.0.1:{port}"
            for n, port in enumerate(self.replica_ports, 1)
        }
        assert len(servers) == 3, "deploy/haproxy.cfg lists three replicas"
        render(
            DEPLOY / "haproxy.cfg",
            {
                "bind 0.0.0.0:8080": f"bind 127.0.0.1:{self.port}",
                "/run/haproxy/admin.sock": str(self.socket_path),
                **servers,
            },
            self.root / "haproxy.cfg",
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(self.root / "haproxy.cfg")],
            stdout=(self.root / "haproxy.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, what="HAProxy", process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def states(self) -> dict[str, str]:
        """{server name: UP, DOWN, ...} as HAProxy's health checks see them."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
            admin.connect(str(self.socket_path))
            admin.sendall(b"show stat\n")
            answer = b""
            while chunk := admin.recv(65536):
                answer += chunk
        lines = answer.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row["status"].split()[0]
            for row in rows
            if row.get("pxname") == "replicas" and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def wait_until(self, server: str, state: str, timeout: float = 60) -> float:
        """Seconds until HAProxy sees `server` in `state`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.states().get(server) == state:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"HAProxy never saw {server} {state}: {self.states()}")


@contextmanager
def haproxy(replica_ports: list[int]) -> Iterator[HAProxy]:
    balancer = HAProxy(
        Path(tempfile.mkdtemp(prefix="users-service-haproxy-")), free_port(), replica_ports
    )
    try:
        balancer.configure()
        balancer.start()
        yield balancer
    finally:
        balancer.stop()
        shutil.rmtree(balancer.root, ignore_errors=True)


@dataclass
class PlainLoad:
    """Plain HTTP callers that never retry, looping GET, POST and PATCH on
    one user. Each answer is kept with when it came and what was asked;
    transport errors in `errors`."""

    base_url: str
    user_id: str
    answers: list[tuple[float, str, httpx.Response]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, worker: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            turn = 0
            while not self.stop.is_set():
                turn += 1
                kind = ("GET", "POST", "PATCH")[(worker + turn) % 3]
                try:
                    if kind == "GET":
                        response = client.get(f"/users/{self.user_id}")
                    elif kind == "POST":
                        response = client.post("/users", json=new_user())
                    else:
                        response = client.patch(f"/users/{self.user_id}", json={"age": turn % 150})
                except httpx.HTTPError as error:
                    self.errors.append(f"{kind}: {error!r}")
                    continue
                self.answers.append((time.monotonic(), kind, response))

    @contextmanager
    def running(self, callers: int) -> Iterator[None]:
        threads = [threading.Thread(target=self.run, args=(n,)) for n in range(callers)]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=120)

    def statuses(self) -> dict[str, int]:
        return dict(Counter(f"{kind} {r.status_code}" for _, kind, r in self.answers))
