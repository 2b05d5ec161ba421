"""openapi.json at the repository root is the app's OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from users_service.__main__ import main
from users_service.openapi import COMMITTED_PATH, REGENERATE_COMMAND, render

OUT_OF_DATE = (
    f"openapi.json differs from the app's OpenAPI document: run `{REGENERATE_COMMAND}` "
    "(python -m users_service openapi --output openapi.json) and commit openapi.json"
)


def test_committed_openapi_json_is_the_document_the_app_serves(client: TestClient) -> None:
    served = client.get("/openapi.json")

    assert served.status_code == 200
    assert json.loads(COMMITTED_PATH.read_text(encoding="utf-8")) == served.json(), OUT_OF_DATE


def test_committed_openapi_json_is_byte_for_byte_what_the_generator_writes() -> None:
    assert COMMITTED_PATH.read_text(encoding="utf-8") == render(), OUT_OF_DATE


def test_openapi_subcommand_writes_the_document(tmp_path: Path) -> None:
    output = tmp_path / "openapi.json"

    assert main(["openapi", "--output", str(output)]) == 0

    assert output.read_text(encoding="utf-8") == render()


def test_operation_ids_read_as_verb_and_noun_in_generated_clients() -> None:
    doc = json.loads(render())

    operations = {
        operation["operationId"]: f"{method.upper()} {path}"
        for path, item in doc["paths"].items()
        for method, operation in item.items()
    }

    assert operations == {
        "create_user": "POST /users",
        "create_users": "POST /users/batch",
        "list_users": "GET /users",
        "get_user": "GET /users/{user_id}",
        "replace_user": "PUT /users/{user_id}",
        "update_user": "PATCH /users/{user_id}",
        "delete_user": "DELETE /users/{user_id}",
        "list_changes": "GET /users/changes",
        "get_user_history": "GET /users/{user_id}/history",
        "check_health": "GET /healthz",
        "check_readiness": "GET /readyz",
        "get_metrics": "GET /metrics",
    }
