"""The Python client's types are generated from openapi.json and cannot drift."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from users_service.errors import ErrorCode
from users_service_client import ERRORS_BY_CODE, UsersServiceError

GENERATOR = Path(__file__).resolve().parents[2] / "clients" / "python" / "generate.py"
_spec = importlib.util.spec_from_file_location("generate_client_models", GENERATOR)
assert _spec is not None and _spec.loader is not None
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)
DOCUMENT, OUTPUT, render = generate.DOCUMENT, generate.OUTPUT, generate.render

REGENERATE = "run `make openapi` and commit clients/python/users_service_client/models.py"


def test_the_committed_client_models_are_generated_from_the_committed_document() -> None:
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    assert OUTPUT.read_text(encoding="utf-8") == render(document), REGENERATE


def test_every_error_code_has_its_own_client_exception() -> None:
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    documented = set(document["components"]["schemas"]["ErrorCode"]["enum"])
    assert documented == {code.value for code in ErrorCode}
    missing = documented - set(ERRORS_BY_CODE)
    assert not missing, f"no client exception for {sorted(missing)}: add one to ERRORS_BY_CODE"
    for code, error_class in ERRORS_BY_CODE.items():
        assert issubclass(error_class, UsersServiceError), code
    assert len(set(ERRORS_BY_CODE.values())) == len(ERRORS_BY_CODE)
