"""Fuzzing with schemathesis: every answer is the one /openapi.json documents.

schemathesis generates requests from the service's own OpenAPI document —
valid ones and, deliberately, invalid ones (wrong types, missing fields,
undeclared methods, no API key) — sends them to the real app in-process on
each configured database, and checks every answer: no 5xx; a status code,
content type, headers and body the document lists for the operation;
invalid data refused; 401 without the key; 405 with a true `Allow`.

Deterministic and bounded: a fixed seed, derandomized generation and no
example database, so a run sends the same requests every time; about 10 s
per database on this machine (see docs/testing.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.python import asgi
from starlette.types import Receive, Scope, Send

from users_service.main import create_app
from users_service.settings import load_settings

# The fuzzer calls with this key: API keys are on, as in production.
FUZZ_KEY = "fuzz-key-0123456789"

# Every check schemathesis has runs, but one:
# - positive_data_acceptance (a request the schema allows must not be 4xx)
#   does not hold for this API by design, and the schema cannot say why: a
#   cursor must be one the service signed; an email must pass
#   email-validator (reserved domains such as `.test` are refused); a name
#   must have no control characters or lone surrogates; `36.0` is a valid
#   JSON Schema integer but not a valid age (no coercion, per the contract).
#   Those are 422s the document lists, and every other check still applies
#   to them.
FUZZ_CONFIG = schemathesis.Config.from_str(f"""
seed = 20261127

[generation]
max-examples = 100
deterministic = true
database = "none"

[checks.positive_data_acceptance]
enabled = false

[auth.openapi.HTTPBearer]
bearer = "{FUZZ_KEY}"
""")


class AppUnderTest:
    """The ASGI app the fuzzer calls: the keyed app of the database being fuzzed.

    The schema is built when this module is imported, before any database
    exists; the `keyed_app` fixture points this at the app for each one.
    """

    app: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "no app under test: use the keyed_app fixture"
        await self.app(scope, receive, send)


APP_UNDER_TEST = AppUnderTest()
# The document does not depend on the database: take it from an app whose
# database is never opened (building an app opens no connection).
DOCUMENT = create_app(
    load_settings(database_url="sqlite:////nonexistent/users.db", environment="test")
).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=FUZZ_CONFIG)
schema.app = APP_UNDER_TEST


@pytest.fixture(scope="module")
def keyed_app(database_url: str) -> Iterator[FastAPI]:
    """The service on this database, with one read-write API key."""
    app = create_app(
        load_settings(
            database_url=database_url,
            environment="test",
            api_keys=f"fuzzer:{FUZZ_KEY}",
            # GET /users/changes?wait=30 on an empty feed: not 30 s per example.
            changes_max_wait_seconds=0.05,
        )
    )
    APP_UNDER_TEST.app = app
    yield app
    # schemathesis ran the app's lifespan (startup) on its first request.
    asgi.shutdown_lifespans()
    APP_UNDER_TEST.app = None
    app.state.database.engine.dispose()


def test_the_fuzzed_document_is_the_one_the_service_serves(keyed_app: FastAPI) -> None:
    response = TestClient(keyed_app).get("/openapi.json")

    assert response.status_code == 200
    assert response.json() == DOCUMENT


@schema.parametrize()
def test_every_answer_matches_the_openapi_document(
    case: schemathesis.Case[Any], keyed_app: FastAPI
) -> None:
    case.call_and_validate()
