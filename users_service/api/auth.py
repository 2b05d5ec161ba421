"""Who may call: API keys from API_KEYS (read and write) and API_READ_KEYS.

Each setting is a comma-separated list of `caller:key` pairs. When either
is set, every /users request needs `Authorization: Bearer <key>`. Keys are
compared in constant time (as SHA-256 digests, so not even their length
shows), and never logged: only the caller's name travels on, in
`scope["state"]["caller"]`, for logs, metrics, rate limits and idempotency
keys (`anonymous` when keys are off, `unauthenticated` for a refused key).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from users_service.api.problems import problem_response
from users_service.errors import Forbidden, Unauthorized
from users_service.settings import ApiKey, key_digest

ANONYMOUS = "anonymous"  # the caller when keys are off, and on the open routes
UNAUTHENTICATED = "unauthenticated"  # a missing or refused key: 401
PROTECTED_PREFIX = "/users"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_protected(path: str) -> bool:
    """Whether requests to `path` need an API key (when keys are configured)."""
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


class ApiKeyMiddleware:
    """Checks the bearer key on /users requests when keys are configured."""

    def __init__(self, app: ASGIApp, keys: Sequence[ApiKey]) -> None:
        self.app = app
        self.keys = tuple(keys)

    def _caller_of(self, scope: Scope) -> ApiKey | None:
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and credentials.strip():
                    token = credentials.strip()
                break
        if token is None:
            return None
        digest = key_digest(token)
        found = None
        for key in self.keys:  # no early exit: every key is compared
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["caller"] = ANONYMOUS
        path = scope["path"]
        if self.keys and is_protected(path):
            key = self._caller_of(scope)
            if key is None:
                state["caller"] = UNAUTHENTICATED
                await problem_response(Unauthorized())(scope, receive, send)
                return
            state["caller"] = key.caller  # a refused write is logged with its caller too
            if not key.can_write and scope["method"] not in READ_METHODS:
                await problem_response(Forbidden())(scope, receive, send)
                return
        await self.app(scope, receive, send)
