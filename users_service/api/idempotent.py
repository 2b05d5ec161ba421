"""The Idempotency-Key flow around a route that declares the header.

A request with a key claims it before anything else is read (see
users_service/idempotency.py for what is stored): a retry gets the first
answer back, whatever it was (a 201, a 409, a 422 about the body), unless
it was a 5xx, or a 4xx too large to keep (IDEMPOTENCY_MAX_ERROR_ANSWER_BYTES).
The route stores a success's answer in its own write transaction
(`Idempotency.save`, with the ids of the users it shows), so the user and
the answer that announces it commit together; other answers are stored
here, after the fact (none of them shows an existing user: an error's
body names fields, never the values sent). A new key past the
caller's cap is refused 429 (`idempotency.KeyUsage`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from users_service import idempotency
from users_service.api.problems import error_response
from users_service.db.database import Connection, Database
from users_service.errors import IdempotencyKeyInUse

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

REPLAYED_HEADER = "Idempotency-Replayed"
# Headers an answer is replayed with (besides its body and content type).
KEPT_HEADERS = ("location", "etag", "content-type")


def answer_of(response: Response) -> idempotency.StoredAnswer:
    headers = {name: value for name, value in response.headers.items() if name in KEPT_HEADERS}
    return idempotency.StoredAnswer(response.status_code, headers, bytes(response.body))


def replay(answer: idempotency.StoredAnswer) -> Response:
    return Response(
        answer.body, status_code=answer.status, headers={**answer.headers, REPLAYED_HEADER: "true"}
    )


@dataclass(frozen=True)
class Idempotency:
    """What a route needs of the flow: where to store its answer, if anywhere."""

    claim: idempotency.Claim | None

    async def save(
        self, response: Response, *, connection: Connection, shows: Sequence[uuid.UUID]
    ) -> None:
        """Store `response` for the request's key, if it has one, in the
        connection's open write transaction; `shows`: the ids of the users
        it shows (a delete of one of them erases it)."""
        if self.claim is not None:
            await idempotency.save_answer(
                connection=connection, claimed=self.claim, answer=answer_of(response), shows=shows
            )


NO_KEY = Idempotency(None)
_CLAIM = "idempotency_claim"


def idempotency_of(request: Request) -> Idempotency:
    """The route's view of the flow (see api/deps.py's IdempotencyDep)."""
    claim = request.scope.get(_CLAIM)
    return NO_KEY if claim is None else Idempotency(claim)


def key_field_of(dependant: Dependant) -> Any | None:
    """The Idempotency-Key header parameter a route declares, if it does
    (itself or through one of its dependencies)."""
    for field in dependant.header_params:
        if field.alias.lower() == idempotency.HEADER.lower():
            return field
    for sub in dependant.dependencies:
        if (found := key_field_of(sub)) is not None:
            return found
    return None


def flow(
    handler: Handler,
    *,
    key_field: Any,
    endpoint: str,
    check_media_type: Callable[[Request], None],
) -> Handler:
    loc = ("header", key_field.alias)

    async def handle(request: Request) -> Response:
        check_media_type(request)
        key = request.headers.get(idempotency.HEADER)
        if key is None:
            return await handler(request)
        _, errors = key_field.validate(key, {}, loc=loc)
        if errors:
            raise RequestValidationError(errors)
        database: Database = request.app.state.database
        usage: idempotency.KeyUsage = request.app.state.idempotency_usage
        caller: str = request.state.caller
        in_flight_timeout = timedelta(
            seconds=request.app.state.settings.idempotency_in_flight_timeout_seconds
        )
        outcome = await idempotency.claim(
            database=database,
            caller=caller,
            endpoint=endpoint,
            key=key,
            request_hash=idempotency.fingerprint(await request.body()),
            usage=usage,
            in_flight_timeout=in_flight_timeout,
        )
        if isinstance(outcome, idempotency.StoredAnswer):
            return replay(outcome)
        request.scope[_CLAIM] = outcome
        try:
            response = await handler(request)
        except Exception as error:
            try:
                response = error_response(error)
            except Exception:
                await idempotency.release(database=database, claimed=outcome)
                usage.released(caller)
                raise
        size = len(response.body)
        if outcome.saved:  # a success, stored with its write
            usage.answered(caller, size)
        elif usage.keeps_answer(response.status_code, size):
            # IdempotencyKeyInUse: a retry took the claim over; its answer is kept.
            with suppress(IdempotencyKeyInUse):
                await idempotency.save_answer_now(
                    database=database, claimed=outcome, answer=answer_of(response)
                )
                usage.answered(caller, size)
        else:  # a 5xx, or a 4xx too large to keep: the retry runs again
            await idempotency.release(database=database, claimed=outcome)
            usage.released(caller)
        return response

    return handle
