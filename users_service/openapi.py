"""The OpenAPI document, as committed in openapi.json at the repository root.

`python -m users_service openapi --output openapi.json` (or `make openapi`)
writes it; tests/test_openapi.py fails when the app's document and the
committed one differ. The document does not depend on the settings: it is
made from an app whose database is never opened.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path
from typing import Any

from users_service.main import create_app
from users_service.settings import load_settings

COMMITTED_PATH = Path(__file__).resolve().parent.parent / "openapi.json"
REGENERATE_COMMAND = "make openapi"


def document() -> dict[str, Any]:
    """The app's OpenAPI document."""
    with tempfile.TemporaryDirectory() as unused:
        settings = load_settings(
            database_url=f"sqlite:///{Path(unused) / 'never-opened.db'}",
            environment="test",
            cursor_secret=secrets.token_hex(16),  # never used: no cursor is made
        )
        app = create_app(settings)
        try:
            return app.openapi()
        finally:
            app.state.database.engine.dispose()


def render(doc: dict[str, Any] | None = None) -> str:
    """The document as committed: indented, keys in the app's order, UTF-8, final newline."""
    return json.dumps(document() if doc is None else doc, indent=2, ensure_ascii=False) + "\n"


def write(output: str) -> None:
    """Write the document to `output` ("-": standard output)."""
    text = render()
    if output == "-":
        print(text, end="")
    else:
        Path(output).write_text(text, encoding="utf-8")
