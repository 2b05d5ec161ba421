"""Command line: `python -m users_service serve | migrate`."""

from __future__ import annotations

import argparse
import sys

from users_service.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="users_service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the API on HOST:PORT")
    commands.add_parser("migrate", help="upgrade the database to the newest migration")
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"users-service: {error}", file=sys.stderr)
        return 2

    if args.command == "migrate":
        from alembic import command

        from users_service.db import alembic_config

        command.upgrade(alembic_config(settings.database_url), "head")
        return 0

    import uvicorn

    uvicorn.run(
        "users_service.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.value.lower(),
        timeout_graceful_shutdown=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
