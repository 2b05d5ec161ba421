"""/docs and /redoc that work with no internet access.

The Swagger UI and ReDoc bundles are served by the service itself, from the
static files the `fastapi-offline` package ships (we use only its files, not
its app class), instead of from a CDN.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from users_service.api.auth import is_protected
from users_service.api.problems import document_problems

STATIC_URL = "/docs-static"

# The pages may load only what the service serves. ReDoc's side menu shows
# Redocly's logo from cdn.redoc.ly; this keeps the browser from fetching
# it (ReDoc hides an image that fails to load). The pages' own bootstrap
# scripts and the bundles' styles are inline; ReDoc's search runs in a
# blob: worker.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)


API_KEY_SCHEME = {
    "type": "http",
    "description": "An API key from API_KEYS or API_READ_KEYS, when the service has them.",
    "scheme": "bearer",
}


def complete_document(app: FastAPI) -> None:
    """Add to the app's OpenAPI document what its routes do not declare: the
    problem schema (api/problems.py), and the bearer scheme on the routes
    auth.ApiKeyMiddleware guards (the keys are checked by that middleware,
    before any route runs; a FastAPI security dependency would only repeat
    the work on every request)."""
    make_document = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = make_document()
            document_problems(document)
            document.setdefault("components", {})["securitySchemes"] = {
                "HTTPBearer": API_KEY_SCHEME
            }
            for path, operations in document["paths"].items():
                if is_protected(path):
                    for operation in operations.values():
                        operation["security"] = [{"HTTPBearer": []}]
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    static_dir = files("fastapi_offline") / "static"
    app.mount(STATIC_URL, StaticFiles(directory=str(static_dir)), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_URL}/favicon.png",
            # No badge from validator.swagger.io: the page makes no outside call.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page
