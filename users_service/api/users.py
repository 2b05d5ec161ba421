"""The /users routes: thin functions that read like the contract."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response, status

from users_service import crud, metrics
from users_service.api.deps import (
    IDEMPOTENCY_KEY,
    IF_MATCH,
    IF_NONE_MATCH,
    USER_ID,
    USER_PATH,
    cursor_codec_of,
    database_of,
    header_of,
    save_idempotent_answer,
    user_id_of,
)
from users_service.api.routing import (
    MERGE_PATCH_JSON,
    JSONBodyRoute,
    parse_query,
    query_parameters,
)
from users_service.errors import problem_responses, validation_failed
from users_service.jsonio import JSONResponse, json_bytes_response
from users_service.models import (
    UserBatchCreate,
    UserBatchPublic,
    UserCreate,
    UserListQuery,
    UserPage,
    UserPublic,
    UserReplace,
    UserUpdate,
)
from users_service.pagination import InvalidCursor, SortOrder
from users_service.preconditions import etag, if_match_condition, if_none_match_condition

router = APIRouter(
    prefix="/users",
    tags=["users"],
    route_class=JSONBodyRoute,
)

LOCATION_HEADER = {"Location": {"description": "/users/{id}", "schema": {"type": "string"}}}
REPLAYED_HEADER = {
    "Idempotency-Replayed": {
        "description": "`true` when this answer is the one stored for an earlier "
        "request with the same Idempotency-Key.",
        "schema": {"type": "string"},
    }
}
ETAG_HEADER = {
    "ETag": {
        "description": 'The user\'s version as a strong tag: `"<version>"`.',
        "schema": {"type": "string"},
    }
}


def user_response(user: crud.UserRecord, status_code: int = 200, **headers: str) -> JSONResponse:
    return JSONResponse(
        user, status_code=status_code, headers={"ETag": etag(user["version"]), **headers}
    )


def next_page_path(request: Request, cursor: str) -> str:
    """This request's path and query with `cursor` in place of any cursor it
    had. The rest of the query string stays as the caller encoded it (a
    cursor is URL-safe as it is)."""
    query = request.scope["query_string"].decode("latin-1")
    kept = [part for part in query.split("&") if part and not part.startswith("cursor=")]
    return f"{request.url.path}?{'&'.join([*kept, f'cursor={cursor}'])}"


# Routes are matched in this order: the most used first (see README, "Throughput").


@router.get(
    USER_PATH,
    response_model=UserPublic,
    operation_id="get_user",
    responses={
        200: {"headers": ETAG_HEADER},
        304: {
            "description": "Not Modified: the user still has the ETag in If-None-Match.",
            "headers": ETAG_HEADER,
        },
        **problem_responses(401, 404, 422, 503),
    },
    openapi_extra={"parameters": [USER_ID, IF_NONE_MATCH]},
)
async def get_user(request: Request) -> Response:
    user_id = user_id_of(request)
    async with database_of(request).read() as connection:
        user = await crud.get_user(connection=connection, user_id=user_id)
    headers = {"ETag": etag(user.version)}
    unchanged = if_none_match_condition(header_of(request, IF_NONE_MATCH))
    if unchanged is not None and unchanged.matches(user.version):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return json_bytes_response(user.json.encode(), headers=headers)


@router.get(
    "",
    response_model=UserPage,
    operation_id="list_users",
    responses={
        200: {
            "headers": {
                "Link": {
                    "description": 'Present when there is a next page: `<...>; rel="next"`.',
                    "schema": {"type": "string"},
                }
            }
        },
        **problem_responses(401, 422, 503),
    },
    openapi_extra={"parameters": query_parameters(UserListQuery)},
)
async def list_users(request: Request) -> Response:
    query = parse_query(UserListQuery, request)
    cursors = cursor_codec_of(request)
    order = SortOrder.parse(query.sort)
    context = query.filter_fingerprint()
    after = None
    if query.cursor is not None:
        try:
            after = cursors.decode(query.cursor, order, context)
        except InvalidCursor as error:
            raise validation_failed(
                [{"loc": ["query", "cursor"], "msg": str(error), "type": "cursor_invalid"}]
            ) from None
    async with database_of(request).read(heavy=crud.may_scan(query)) as connection:
        page = await crud.list_users(connection=connection, query=query, order=order, after=after)
    next_cursor = None
    headers = {}
    if page.more:
        last = order.key_of(orjson.loads(page.users[-1]))
        next_cursor = cursors.encode(order, context, last)
        headers["Link"] = f'<{next_page_path(request, next_cursor)}>; rel="next"'
    body = '{"items":[' + ",".join(page.users) + "],"
    body += '"next_cursor":' + orjson.dumps(next_cursor).decode()
    if page.total is not None:
        body += f',"total":{page.total}'
    return json_bytes_response((body + "}").encode(), headers=headers)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    operation_id="create_user",
    responses={
        201: {"headers": {**ETAG_HEADER, **LOCATION_HEADER, **REPLAYED_HEADER}},
        **problem_responses(401, 403, 409, 413, 415, 422, 503),
    },
    openapi_extra={"parameters": [IDEMPOTENCY_KEY]},
)
async def create_user(body: UserCreate, request: Request) -> Response:
    async with database_of(request).transaction() as connection:
        user = await crud.create_user(connection=connection, data=body)
        response = user_response(user, status.HTTP_201_CREATED, Location=f"/users/{user['id']}")
        await save_idempotent_answer(request, response, connection=connection)
    metrics.USERS_CREATED.inc()
    return response


@router.patch(
    USER_PATH,
    response_model=UserPublic,
    operation_id="update_user",
    responses={
        200: {"headers": ETAG_HEADER},
        **problem_responses(401, 403, 404, 409, 412, 413, 415, 422, 503),
    },
    openapi_extra={
        "parameters": [USER_ID, IF_MATCH],
        "requestBody": {
            "content": {MERGE_PATCH_JSON: {"schema": {"$ref": "#/components/schemas/UserUpdate"}}}
        },
    },
)
async def update_user(body: UserUpdate, request: Request) -> Response:
    user_id = user_id_of(request)
    expected = if_match_condition(header_of(request, IF_MATCH))
    async with database_of(request).transaction() as connection:
        user = await crud.update_user(
            connection=connection,
            user_id=user_id,
            changes=body.model_dump(include=body.model_fields_set),
            expected=expected,
        )
    metrics.USERS_UPDATED.inc()
    return user_response(user)


@router.put(
    USER_PATH,
    response_model=UserPublic,
    operation_id="replace_user",
    responses={
        200: {"headers": ETAG_HEADER},
        **problem_responses(401, 403, 404, 409, 412, 413, 415, 422, 503),
    },
    openapi_extra={"parameters": [USER_ID, IF_MATCH]},
)
async def replace_user(body: UserReplace, request: Request) -> Response:
    user_id = user_id_of(request)
    expected = if_match_condition(header_of(request, IF_MATCH))
    async with database_of(request).transaction() as connection:
        user = await crud.update_user(
            connection=connection, user_id=user_id, changes=body.model_dump(), expected=expected
        )
    metrics.USERS_UPDATED.inc()
    return user_response(user)


@router.delete(
    USER_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="delete_user",
    responses=problem_responses(401, 403, 404, 412, 422, 503),
    openapi_extra={"parameters": [USER_ID, IF_MATCH]},
)
async def delete_user(request: Request) -> Response:
    user_id = user_id_of(request)
    expected = if_match_condition(header_of(request, IF_MATCH))
    async with database_of(request).transaction() as connection:
        await crud.delete_user(connection=connection, user_id=user_id, expected=expected)
    metrics.USERS_DELETED.inc()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/batch",
    status_code=status.HTTP_201_CREATED,
    response_model=UserBatchPublic,
    operation_id="create_users",
    responses={
        201: {"headers": REPLAYED_HEADER},
        **problem_responses(401, 403, 409, 413, 415, 422, 503),
    },
    openapi_extra={"parameters": [IDEMPOTENCY_KEY]},
)
async def create_users(body: UserBatchCreate, request: Request) -> Response:
    """Create 1-1000 users, all or nothing; they come back in the order sent."""
    async with database_of(request).transaction() as connection:
        created = await crud.create_users(connection=connection, data=body.users)
        response = JSONResponse({"items": created}, status_code=status.HTTP_201_CREATED)
        await save_idempotent_answer(request, response, connection=connection)
    metrics.USERS_CREATED.inc(len(created))
    return response
