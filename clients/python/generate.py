"""Write users_service_client/models.py from the service's openapi.json.

    python clients/python/generate.py [openapi.json] [output]   (make openapi runs it)

The client's types are the document's schemas, so they follow the server's
model: a field added there reaches the client through `make openapi`. A
test (tests/unit/test_client_models.py) fails when the committed models
differ from what this writes.

Responses become pydantic models (unknown fields are ignored, so an older
client keeps working against a newer server); request bodies and the list
filters become TypedDicts, for keyword arguments; enums become Literals,
and the error codes a StrEnum.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOCUMENT = HERE.parent.parent / "openapi.json"
OUTPUT = HERE / "users_service_client" / "models.py"

# Response schemas, as pydantic models, in dependency order.
MODELS = (
    "ErrorDetail",
    "ProblemDetails",
    "UserPublic",
    "UserPage",
    "UserBatchPublic",
    "UserChangePublic",
    "ChangePage",
    "HistoryPage",
)
# Request bodies, as TypedDicts: (schema, name in the client, every key required?).
BODIES = (("UserCreate", "NewUser"), ("UserUpdate", "UserChanges"))
# Query parameters of GET /users that the client takes as its own arguments.
PAGING = ("limit", "cursor", "include_total")


def literal(value: Any) -> str:
    """A Python literal, strings in double quotes (as ruff formats them)."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def python_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"].rsplit("/", 1)[1])
    if "anyOf" in schema:
        return " | ".join(python_type(option) for option in schema["anyOf"])
    if "const" in schema:
        return f"Literal[{literal(schema['const'])}]"
    if "enum" in schema:
        return "Literal[" + ", ".join(literal(value) for value in schema["enum"]) + "]"
    kind = schema.get("type")
    if kind == "string":
        return {"uuid": "uuid.UUID", "date-time": "datetime"}.get(schema.get("format", ""), "str")
    if kind == "array":
        return f"list[{python_type(schema['items'])}]"
    simple = {"integer": "int", "boolean": "bool", "number": "float", "null": "None"}
    if kind in simple:
        return simple[kind]
    raise ValueError(f"no Python type for the schema {schema}")


def _docstring(text: str | None, indent: str) -> list[str]:
    return [f'{indent}"""{text}"""', ""] if text else []


def model(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"class {name}(BaseModel):", *_docstring(schema.get("description"), "    ")]
    required = set(schema.get("required", ()))
    for field, spec in schema["properties"].items():
        annotation = python_type(spec)
        if field in required:
            lines.append(f"    {field}: {annotation}")
        else:
            lines.append(f"    {field}: {annotation} = {literal(spec.get('default'))}")
    return [*lines, "", ""]


def typed_dict(name: str, properties: dict[str, Any], required: set[str], doc: str) -> list[str]:
    lines = [f"class {name}(TypedDict, total=False):", f'    """{doc}"""', ""]
    for field, spec in properties.items():
        annotation = python_type(spec)
        if field in required:
            annotation = f"Required[{annotation}]"
        lines.append(f"    {field}: {annotation}")
    return [*lines, "", ""]


def error_codes(schema: dict[str, Any]) -> list[str]:
    lines = ["class ErrorCode(StrEnum):", *_docstring(schema.get("description"), "    ")]
    lines += [f"    {value.upper()} = {literal(value)}" for value in schema["enum"]]
    return [*lines, "", ""]


def render(document: dict[str, Any]) -> str:
    schemas = document["components"]["schemas"]
    parameters = document["paths"]["/users"]["get"]["parameters"]
    sort = next(p for p in parameters if p["name"] == "sort")
    filters = {p["name"]: p["schema"] for p in parameters if p["name"] not in PAGING}
    for spec in filters.values():  # a filter is given or left out; never null
        spec.pop("default", None)
        if "anyOf" in spec:
            spec.update(next(s for s in spec.pop("anyOf") if s.get("type") != "null"))
    lines = [
        '"""The service\'s schemas as Python types. Generated from openapi.json',
        "(version " + document["info"]["version"] + ") by clients/python/generate.py"
        " (make openapi): do not edit."
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import uuid",
        "from datetime import datetime",
        "from enum import StrEnum",
        "from typing import Literal, Required, TypedDict",
        "",
        "from pydantic import BaseModel",
        "",
        f"SortValue = {python_type({'enum': sort['schema']['enum']})}",
        "",
        "",
        *error_codes(schemas["ErrorCode"]),
    ]
    for name in MODELS:
        lines += model(name, schemas[name])
    for schema_name, name in BODIES:
        schema = schemas[schema_name]
        lines += typed_dict(
            name,
            schema["properties"],
            set(schema.get("required", ())),
            f"Fields of {schema_name}: {schema.get('description', '')}",
        )
    filters["sort"] = {"$ref": "#/components/schemas/SortValue"}
    lines += typed_dict("UserFilters", filters, set(), "The sort and filters of GET /users.")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else DOCUMENT
    output = Path(argv[2]) if len(argv) > 2 else OUTPUT
    output.write_text(render(json.loads(source.read_text(encoding="utf-8"))), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
