"""The route class of the API: typed signatures, read without FastAPI's per-request solver.

Routes declare their path, query, header and body parameters and their
dependencies in their signatures (the `Annotated` aliases of api/deps.py),
and FastAPI builds the OpenAPI document from them as usual. What this class
changes is how a request's values reach the function. FastAPI solves the
route's dependency graph on every request; the profile showed that as 46%
of a GET (docs/design.md). `TypedRoute` instead walks the route's
`dependant` once, at start-up, and builds one reader per parameter:

- a path, query or header parameter is looked up by its name (a header by
  its alias) and validated by FastAPI's own field for it (pydantic, so the
  422s say what FastAPI's would); a query model gets the whole query string;
- the body is checked for its media type (415), parsed as one JSON object
  (422 otherwise) and validated by its field; PATCH also takes
  application/merge-patch+json (and says so in the document);
- a dependency is called with its own parameters, read the same way
  (dependencies are called inline: they must not block);
- `Request` is passed as it is.

Anything else (cookies, a dependency with `yield`, security scopes,
background tasks, a `Response` parameter, an endpoint that returns anything
but a `Response`) is refused when the route is made, so a signature can
never declare what the reader would silently ignore. A route that declares
the Idempotency-Key header runs in the Idempotency-Key flow (api/idempotent.py).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, get_type_hints

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import BaseRoute

from users_service.api import idempotent
from users_service.api.jsonio import BodyError, parse_json_object
from users_service.errors import UnsupportedMediaType, ValidationFailed

JSON = "application/json"
MERGE_PATCH_JSON = "application/merge-patch+json"

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
Errors = list[dict[str, Any]]
# Reads one argument from the request; appends what is wrong to the errors.
Reader = Callable[[Request, Errors], Awaitable[Any]]


def accepted_media_types(methods: set[str]) -> tuple[str, ...]:
    return (JSON, MERGE_PATCH_JSON) if "PATCH" in methods else (JSON,)


def media_type_of(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class TypedRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self.body_field is not None and MERGE_PATCH_JSON in self._accepted:
            model = getattr(self.body_field.field_info.annotation, "__name__", None)
            schema = {"$ref": f"#/components/schemas/{model}"}
            extra = self.openapi_extra or {}
            extra.setdefault("requestBody", {"content": {MERGE_PATCH_JSON: {"schema": schema}}})
            self.openapi_extra = extra

    @property
    def _accepted(self) -> tuple[str, ...]:
        return accepted_media_types(self.methods or set())

    def get_route_handler(self) -> Handler:
        _check_returns_a_response(self.dependant)
        read = _arguments_reader(self.dependant, body_media_types=self._accepted)
        endpoint = self.dependant.call
        assert endpoint is not None
        call = endpoint if inspect.iscoroutinefunction(endpoint) else _in_threadpool(endpoint)

        async def handle(request: Request) -> Response:
            errors: Errors = []
            arguments = await read(request, errors)
            if errors:
                raise RequestValidationError(errors)
            response: Response = await call(**arguments)
            return response

        key_field = idempotent.key_field_of(self.dependant)
        if key_field is None:
            return handle
        return idempotent.flow(
            handle,
            key_field=key_field,
            endpoint=f"{'/'.join(sorted(self.methods or ()))} {self.path}",
            check_media_type=lambda request: _check_media_type(request, self._accepted),
        )


def head_routes(routes: Sequence[BaseRoute]) -> list[APIRoute]:
    """A HEAD route for each GET route: HEAD is served wherever GET is (RFC 9110).

    FastAPI's routes answer only the methods they declare (Starlette's add
    HEAD to GET). Each copy shares its GET route's handler, so it answers
    with the same status and headers, and the server leaves the body out.
    Added after every other route, they are tried by HEAD requests only (a
    HEAD first meets its GET route, which matches all but the method), so
    other requests do not pay for them. The OpenAPI document does not list
    them: HEAD goes with GET, and a 405's `Allow` says so.
    """
    heads = []
    for route in routes:
        methods = getattr(route, "methods", None) or set()
        if isinstance(route, APIRoute) and "GET" in methods and "HEAD" not in methods:
            head = copy.copy(route)
            head.methods = {"HEAD"}
            head.include_in_schema = False
            heads.append(head)
    return heads


def _in_threadpool(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(**arguments: Any) -> Any:
        return await run_in_threadpool(function, **arguments)

    return call


def _check_returns_a_response(dependant: Dependant) -> None:
    assert dependant.call is not None
    returns = get_type_hints(dependant.call).get("return")
    if not (isinstance(returns, type) and issubclass(returns, Response)):
        raise TypeError(
            f"{dependant.call.__qualname__} must be annotated to return a Response: "
            "TypedRoute sends what the route returns as it is"
        )


def _refuse_what_cannot_be_read(dependant: Dependant) -> None:
    name = getattr(dependant.call, "__qualname__", repr(dependant.call))
    unreadable = {
        "cookie parameters": dependant.cookie_params,
        "a Response parameter": dependant.response_param_name,
        "background tasks": dependant.background_tasks_param_name,
        "security scopes": dependant.security_scopes_param_name,
        "a WebSocket": dependant.websocket_param_name,
        "an HTTPConnection": dependant.http_connection_param_name,
    }
    for kind, present in unreadable.items():
        if present:
            raise TypeError(f"{name}: TypedRoute cannot read {kind}")
    call = dependant.call
    if call is not None and (inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call)):
        raise TypeError(f"{name}: TypedRoute cannot run a dependency with yield")


def _arguments_reader(dependant: Dependant, *, body_media_types: tuple[str, ...]) -> Reader:
    """One reader for every argument of `dependant.call`, built now."""
    _refuse_what_cannot_be_read(dependant)
    readers: list[tuple[str, Reader]] = []
    for field in dependant.path_params:
        readers.append((field.name, _parameter_reader(field, "path")))
    for field in dependant.query_params:
        readers.append((field.name, _query_reader(field)))
    for field in dependant.header_params:
        readers.append((field.name, _parameter_reader(field, "header")))
    for sub in dependant.dependencies:
        assert sub.name is not None, "dependencies without a parameter are not supported"
        readers.append((sub.name, _dependency_reader(sub, body_media_types)))
    if dependant.body_params:
        if len(dependant.body_params) > 1 or (
            dependant.dependencies and any(d.body_params for d in dependant.dependencies)
        ):
            raise TypeError("TypedRoute reads one body parameter, not embedded ones")
        body = dependant.body_params[0]
        readers.append((body.name, _body_reader(body, body_media_types)))
    request_name = dependant.request_param_name

    async def read(request: Request, errors: Errors) -> dict[str, Any]:
        arguments = {name: await reader(request, errors) for name, reader in readers}
        if request_name is not None:
            arguments[request_name] = request
        return arguments

    return read


def _missing(loc: tuple[str, ...]) -> dict[str, Any]:
    error = ValidationError.from_exception_data(
        "Field required", [{"type": "missing", "loc": loc, "input": None}]
    ).errors(include_url=False)[0]
    return dict(error)


def _parameter_reader(field: Any, where: str) -> Reader:
    alias: str = field.alias
    info = field.field_info
    if where == "header" and getattr(info, "convert_underscores", True) and alias == field.name:
        alias = alias.replace("_", "-")
    loc = (where, alias)
    required = info.is_required()
    default = field.default

    async def read(request: Request, errors: Errors) -> Any:
        source = request.path_params if where == "path" else request.headers
        raw = source.get(alias)
        if raw is None:
            if required:
                errors.append(_missing(loc))
            return default
        value, problems = field.validate(raw, {}, loc=loc)
        errors.extend(problems)
        return value

    return read


def _query_reader(field: Any) -> Reader:
    model = field.field_info.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return _single_query_reader(field)
    for name, model_field in model.model_fields.items():
        if model_field.alias not in (None, name):
            raise TypeError(f"{model.__name__}.{name}: TypedRoute reads query fields by name")

    async def read(request: Request, errors: Errors) -> Any:
        # A parameter given twice counts once, the last time.
        value, problems = field.validate(dict(request.query_params), {}, loc=("query",))
        errors.extend(problems)
        return value

    return read


def _single_query_reader(field: Any) -> Reader:
    loc = ("query", field.alias)
    required = field.field_info.is_required()
    default = field.default

    async def read(request: Request, errors: Errors) -> Any:
        raw = request.query_params.get(field.alias)
        if raw is None:
            if required:
                errors.append(_missing(loc))
            return default
        value, problems = field.validate(raw, {}, loc=loc)
        errors.extend(problems)
        return value

    return read


def _dependency_reader(dependant: Dependant, body_media_types: tuple[str, ...]) -> Reader:
    read_arguments = _arguments_reader(dependant, body_media_types=body_media_types)
    call = dependant.call
    assert call is not None
    is_async = inspect.iscoroutinefunction(call)

    async def read(request: Request, errors: Errors) -> Any:
        arguments = await read_arguments(request, errors)
        if errors:
            return None
        return await call(**arguments) if is_async else call(**arguments)

    return read


def _check_media_type(request: Request, accepted: tuple[str, ...]) -> None:
    if media_type_of(request) not in accepted:
        raise UnsupportedMediaType(accepted)


def _body_reader(field: Any, accepted: tuple[str, ...]) -> Reader:
    async def read(request: Request, errors: Errors) -> Any:
        _check_media_type(request, accepted)
        try:
            body = parse_json_object(await request.body())
        except BodyError as error:
            raise ValidationFailed(
                [{"loc": ["body"], "msg": str(error), "type": "json_invalid"}]
            ) from None
        value, problems = field.validate(body, {}, loc=("body",))
        errors.extend(problems)
        return value

    return read
