"""A sibling service's use of users-service-client, run by an interpreter that
has the client and nothing of the server (tests/system/test_installed_package.py).

Usage: python client_alone.py BASE_URL. Imports only the client and the
standard library; prints one line per step, which the test compares.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys

from users_service_client import (
    AsyncUsersClient,
    EmailTaken,
    UserNotFound,
    UsersClient,
    ValidationFailed,
    VersionMismatch,
)

SERVER_PACKAGES = ("users_service", "fastapi", "sqlalchemy", "sqlmodel", "psycopg", "pymysql")


def main(base_url: str) -> None:
    present = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is not None]
    print("server packages:", present)
    with UsersClient(base_url) as users:
        ada = users.create_user(name="Ada Lovelace", email="ada@example.com", age=36)
        print("created", ada.name, ada.version)
        print("read", users.get_user(ada.id).email)
        for n in range(3):
            users.create_user(name=f"User {n}", email=f"user{n}@example.com", age=20 + n)
        first = users.list_users(limit=2, sort="email")
        second = users.list_users(limit=2, sort="email", cursor=first.next_cursor)
        print("pages", [u.email for u in first.items], [u.email for u in second.items])
        print("iterated", len(list(users.iter_users(limit=1))))
        older = ada
        ada = users.update_user(ada, age=37)  # If-Match: "1"
        print("updated", ada.age, ada.version)
        try:
            users.update_user(older, age=38)
        except VersionMismatch as error:
            print("stale", error.status, error.code)
        try:
            users.create_user(name="Ada again", email="ADA@example.com", age=1)
        except EmailTaken as error:
            print("taken", error.status, error.code, error.errors[0].loc)
        try:
            users.create_user(name="Bad", email="not an email", age=1)
        except ValidationFailed as error:
            print("invalid", error.status, error.code, error.errors[0].loc)
        users.delete_user(ada)
        try:
            users.get_user(ada.id)
        except UserNotFound as error:
            print("deleted", error.status, error.code)
    asyncio.run(use_async(base_url))


async def use_async(base_url: str) -> None:
    async with AsyncUsersClient(base_url) as users:
        grace = await users.create_user(name="Grace Hopper", email="grace@example.com", age=85)
        print("async", (await users.get_user(grace)).name)


if __name__ == "__main__":
    main(sys.argv[1])
