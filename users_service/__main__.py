"""Command line: `python -m users_service serve | migrate | seed | import | export | relay |
openapi`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from users_service.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _in_finalizer(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _stop(signum: int, frame: FrameType | None) -> None:
    """Unwind (so that a half-written file is removed), then exit as killed by `signum`.

    Python prints and drops an exception raised in a finalizer (`__del__`):
    a SIGTERM that arrived while PyMySQL's result finalizer ran let an
    export run on to the end. There the signal is sent again a millisecond
    later (from a timer thread: os.kill from this thread would run this
    handler again at once), until it arrives outside a finalizer."""
    if _in_finalizer(frame):
        threading.Timer(0.001, os.kill, (os.getpid(), signum)).start()
        return
    raise SystemExit(128 + signum)


def _exit_now_if_requests_were_abandoned(grace_seconds: int) -> None:
    """Exit at once if request threads outlived the shutdown grace period.

    uvicorn cancels the requests still running at the end of the grace
    period, but a thread blocked in the database (on a lock, say) cannot be
    cancelled, and the interpreter would wait for it before exiting. Their
    transactions never committed: the database rolls them back when the
    process's connections close.
    """
    others = [t for t in threading.enumerate() if t is not threading.current_thread()]
    deadline = time.monotonic() + 1.0  # idle worker threads are on their way out
    for thread in others:
        if not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t for t in others if t.is_alive() and not t.daemon]
    if not stuck:
        return
    logging.getLogger("users_service").error(
        "%d worker thread(s) still busy after the %d s shutdown grace period: "
        "their requests are abandoned, their transactions rolled back; exiting",
        len(stuck),
        grace_seconds,
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _prepare_multiprocess_metrics() -> None:
    """Workers keep their metrics in files that /metrics adds up: in
    PROMETHEUS_MULTIPROC_DIR (emptied here), or a new temporary directory."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for stale in Path(directory).glob("*.db"):
            stale.unlink()
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="users-service-metrics-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="users_service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the API on HOST:PORT")
    commands.add_parser("migrate", help="upgrade the database to the newest migration")
    seed = commands.add_parser(
        "seed",
        help="insert N synthetic users (bulk, with progress; no changes in the change log)",
    )
    seed.add_argument("count", type=int, help="how many users")
    seed.add_argument("--batch-size", type=int, default=10_000)
    commands.add_parser(
        "relay", help="publish the change log to NATS JetStream (RELAY_* settings), until SIGTERM"
    )
    openapi = commands.add_parser("openapi", help="write the OpenAPI document (make openapi)")
    openapi.add_argument("--output", default="-", help="file to write; - (default): stdout")
    _add_transfer_commands(commands)
    args = parser.parse_args(argv)

    if args.command == "openapi":  # the document does not depend on the settings
        from users_service.openapi import write

        write(args.output)
        return 0

    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"users-service: {error}", file=sys.stderr)
        return 2

    if args.command == "migrate":
        from alembic import command

        from users_service.db.schema import alembic_config

        command.upgrade(alembic_config(settings.database_url), "head")
        return 0

    if args.command == "seed":
        import time

        from users_service.db.engine import create_db_engine
        from users_service.seed import seed_users

        # A bulk load is no request: DB_STATEMENT_TIMEOUT_MS does not apply.
        engine = create_db_engine(settings.model_copy(update={"db_statement_timeout_ms": 0}))
        started = time.perf_counter()
        seed_users(engine, args.count, batch_size=args.batch_size)
        elapsed = time.perf_counter() - started
        print(f"seeded {args.count} users in {elapsed:.1f} s ({args.count / elapsed:,.0f}/s)")
        print("seeded users have no changes in the change log (GET /users/changes)")
        engine.dispose()
        return 0

    if args.command in ("import", "export"):
        return _transfer(args, settings)

    if args.command == "relay":
        import asyncio

        from users_service.logs import configure_logging
        from users_service.relay import relay

        configure_logging(settings, buffered=False)
        asyncio.run(relay(settings))
        return 0

    from functools import partial

    import uvicorn

    from users_service.api.connections import BoundedHttpToolsProtocol, ConnectionLimits
    from users_service.logs import configure_logging

    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to
    # the handler that was there before it; make that one exit with 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    configure_logging(settings, buffered=False)  # each worker's app buffers its own
    if settings.workers > 1:
        _prepare_multiprocess_metrics()
    try:
        uvicorn.run(
            "users_service.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            # httptools, with bounded request heads and timeouts (named, so
            # that h11 is never used instead); uvicorn makes one per
            # connection by calling this as it would the class.
            http=partial(  # type: ignore[arg-type]
                BoundedHttpToolsProtocol, limits=ConnectionLimits.for_settings(settings)
            ),
            timeout_keep_alive=settings.keep_alive_timeout_seconds,
            # No route takes a WebSocket: an Upgrade is not handed to one.
            ws="none",
            # The app reads X-Forwarded-For itself (main.py), peer logged.
            proxy_headers=False,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
            # The app logs (users_service.logs): one line per request, its own.
            log_config=None,
            access_log=False,
        )
    finally:
        _exit_now_if_requests_were_abandoned(settings.shutdown_grace_seconds)
    return 0


def _batch_size(value: str) -> int:
    from users_service.transfer import BATCH_SIZE_MAX

    size = int(value)
    if not 1 <= size <= BATCH_SIZE_MAX:
        raise argparse.ArgumentTypeError(f"must be from 1 to {BATCH_SIZE_MAX}")
    return size


def _add_transfer_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    formats = ("jsonl", "csv")
    load = commands.add_parser(
        "import", help="import users from a CSV or JSON Lines file (streamed, in batches)"
    )
    from users_service.transfer import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

    load.add_argument(
        "file",
        type=Path,
        help=f"columns {','.join(REQUIRED_COLUMNS)}[,{','.join(OPTIONAL_COLUMNS)}]",
    )
    load.add_argument(
        "--format", choices=formats, help="default: from the extension (.csv, .jsonl, .ndjson)"
    )
    load.add_argument(
        "--rejects", type=Path, help="where rejected rows go (default: FILE.rejects.<ext>)"
    )
    load.add_argument("--batch-size", type=_batch_size, default=10_000, help="rows per transaction")
    load.add_argument(
        "--workers",
        type=int,
        choices=range(9),
        default=min(os.cpu_count() or 1, 4),
        metavar="N",
        help="processes that check rows, besides the one that writes (0-8; default: the CPUs, "
        "at most 4)",
    )
    load.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    load.add_argument(
        "--raw",
        action="store_true",
        help="CSV: take cells as they are (no leading ' taken off) and write rejects so",
    )
    dump = commands.add_parser("export", help="write every user as JSON Lines or CSV, streamed")
    dump.add_argument("--format", choices=formats, default="jsonl")
    dump.add_argument(
        "--output",
        "-o",
        type=Path,
        help="file to replace once written whole (default: standard output, streamed)",
    )
    dump.add_argument("--batch-size", type=_batch_size, default=10_000, help="rows per page")
    dump.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    dump.add_argument(
        "--raw",
        action="store_true",
        help="CSV: write cells as they are (no leading ' before =, +, -, @, tab or CR)",
    )


def _transfer(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy.exc import DBAPIError

    from users_service.db.engine import create_db_engine
    from users_service.transfer import TransferError, import_file

    # SIGTERM unwinds as Ctrl-C does: a file being written is removed, the
    # one it would have replaced stays.
    signal.signal(signal.SIGTERM, _stop)
    # An import is a bulk load, no request: DB_STATEMENT_TIMEOUT_MS does not
    # apply to it, as to seed. One batch is one INSERT on MariaDB, its
    # trigram triggers included: 8-12 s per 10,000 rows at load average 4-5,
    # and a 200,000-row import stopped half-way on the 10 s limit.
    if args.command == "import":
        settings = settings.model_copy(update={"db_statement_timeout_ms": 0})
    engine = create_db_engine(settings)
    try:
        if args.command == "export":
            return _export(args, engine)
        summary, rejects = import_file(
            engine,
            args.file,
            fmt=args.format,
            rejects_path=args.rejects,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.no_progress,
            raw=args.raw,
        )
        print(summary)
        if summary.rejected:
            print(f"rejected rows, with their line and reason: {rejects}")
        return 0
    except (TransferError, OSError) as error:
        print(f"users-service: {error}", file=sys.stderr)
        return 2
    except DBAPIError as error:
        # The batches committed so far stay; importing again finishes the job.
        print(f"users-service: the database failed: {error.orig}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("users-service: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        engine.dispose()


def _export(args: argparse.Namespace, engine: Engine) -> int:
    """To --output (written whole, then renamed into place), or streamed to stdout."""
    from users_service.transfer import export_file, export_users

    started = time.perf_counter()
    options = {
        "fmt": args.format,
        "page_size": args.batch_size,
        "progress": not args.no_progress,
        "raw": args.raw,
    }
    if args.output:
        count = export_file(engine, args.output, **options)
    else:
        with engine.connect() as connection:
            count = export_users(connection=connection, out=sys.stdout.buffer, **options)
    print(f"exported {count} users in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
