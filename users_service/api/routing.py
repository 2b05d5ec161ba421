"""The route class of /users: JSON bodies by the contract's rules, and
Idempotency-Key on POST.

FastAPI on its own treats a body of another content type as bytes (a 422
about the body's type, not a 415) and answers 400 for bodies it cannot
decode. This class checks the content type first (415), then parses the
body as one JSON object (422 otherwise), and hands the parsed object to
FastAPI's validation.

On POST, a request with an `Idempotency-Key` claims the key before any of
that (see users_service/idempotency.py): a retry gets the first answer back,
whatever it was (a 201, a 409, a 422 about the body), unless it was a 5xx.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from users_service import idempotency
from users_service.errors import error_response, unsupported_media_type, validation_failed
from users_service.jsonio import BodyError, parse_json_object

M = TypeVar("M", bound=BaseModel)

JSON = "application/json"
MERGE_PATCH_JSON = "application/merge-patch+json"

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def accepted_media_types(methods: set[str]) -> tuple[str, ...]:
    return (JSON, MERGE_PATCH_JSON) if "PATCH" in methods else (JSON,)


def media_type_of(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class JSONBodyRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        methods = self.methods or set()
        accepted = accepted_media_types(methods)
        endpoint = f"{'/'.join(sorted(methods))} {self.path}"

        async def parse_body_then_handle(request: Request) -> Response:
            try:
                body = parse_json_object(await request.body())
            except BodyError as error:
                raise validation_failed(
                    [{"loc": ["body"], "msg": str(error), "type": "json_invalid"}]
                ) from None
            # Starlette's Request caches the parsed body here; FastAPI's
            # handler reads it through `await request.json()`.
            request._json = body
            return await handler(request)

        async def handle(request: Request) -> Response:
            if media_type_of(request) not in accepted:
                raise unsupported_media_type(accepted)
            key = request.headers.get(idempotency.HEADER)
            if "POST" not in methods or key is None:
                return await parse_body_then_handle(request)
            return await handle_idempotently(request, key, endpoint, parse_body_then_handle)

        return handle


async def handle_idempotently(
    request: Request, key: str, endpoint: str, handler: Handler
) -> Response:
    if not idempotency.KEY_PATTERN.fullmatch(key):
        raise idempotency.malformed_key()
    database = request.app.state.database
    outcome = await idempotency.claim(
        database=database,
        caller=request.state.caller,
        endpoint=endpoint,
        key=key,
        request_hash=idempotency.fingerprint(await request.body()),
    )
    if isinstance(outcome, idempotency.StoredAnswer):
        return outcome.response()
    request.state.idempotency_claim = outcome
    try:
        response = await handler(request)
    except Exception as error:
        try:
            response = error_response(error)
        except Exception:
            await idempotency.release(database=database, claimed=outcome)
            raise
    if response.status_code >= 500:
        await idempotency.release(database=database, claimed=outcome)
    elif not outcome.saved:
        await idempotency.save_answer_now(database=database, claimed=outcome, response=response)
    return response


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI `parameters` of a query model's fields (see parse_query)."""
    properties = model.model_json_schema()["properties"]
    parameters = []
    for name, field in model.model_fields.items():
        schema = {key: value for key, value in properties[name].items() if key != "default"}
        if field.default is not None:
            schema["default"] = field.default
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": field.is_required(),
                "schema": schema,
                "description": field.description,
            }
        )
    return parameters


def parse_query(model: type[M], request: Request) -> M:
    """The query string as `model`, or 422 as FastAPI words it.

    What `Annotated[Model, Query()]` does, at a fraction of its cost: FastAPI
    re-inspects every field's annotation on every request (see README,
    "Throughput"). A parameter given twice counts once, the last time.
    """
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as error:
        raise RequestValidationError(
            [{**detail, "loc": ("query", *detail["loc"])} for detail in error.errors()]
        ) from None
