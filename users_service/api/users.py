"""The /users routes: thin functions that read like the contract."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response, status

from users_service import changes, crud, metrics
from users_service.api.deps import (
    USER_PATH,
    ChangeSourceDep,
    ChangesQuery,
    CursorCodecDep,
    DatabaseDep,
    HistoryListQuery,
    IdempotencyDep,
    IfMatch,
    IfNoneMatch,
    ListQuery,
    SettingsDep,
    UserId,
)
from users_service.api.jsonio import JSONResponse, json_bytes_response
from users_service.api.problems import problem_responses
from users_service.api.routing import TypedRoute
from users_service.db.rendering import UserRecord
from users_service.errors import CursorExpired, ValidationFailed
from users_service.models import (
    ChangePage,
    HistoryPage,
    UserBatchCreate,
    UserBatchPublic,
    UserCreate,
    UserPage,
    UserPublic,
    UserReplace,
    UserUpdate,
)
from users_service.pagination import CursorCodec, InvalidCursor, SortOrder
from users_service.preconditions import etag, if_match_condition, if_none_match_condition

router = APIRouter(prefix="/users", tags=["users"], route_class=TypedRoute)

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
# The creates' 429: a caller over its rate, or a new Idempotency-Key past
# the caller's cap.
IDEMPOTENCY_QUOTA_RESPONSE: dict[int | str, dict[str, Any]] = {
    429: {
        **problem_responses(429)[429],
        "description": "Too Many Requests: `rate_limited` (the caller is over its "
        "RATE_LIMITS rate or has too many requests in flight), or "
        "`idempotency_quota_exceeded`, a new "
        "Idempotency-Key while this caller keeps as many keys (or bytes of answers) as "
        "it may (IDEMPOTENCY_MAX_KEYS_PER_CALLER, IDEMPOTENCY_MAX_BYTES_PER_CALLER). "
        "Stored keys are still replayed, and a request without a key is served.",
        "headers": {
            "Retry-After": {
                "description": "Seconds: room comes back as the caller's keys expire.",
                "schema": {"type": "integer"},
            }
        },
    }
}
LINK_HEADER = {
    "Link": {
        "description": 'Present when there is a next page: `<...>; rel="next"`.',
        "schema": {"type": "string"},
    }
}


def user_response(user: UserRecord, status_code: int = 200, **headers: str) -> JSONResponse:
    return JSONResponse(
        user, status_code=status_code, headers={"ETag": etag(user["version"]), **headers}
    )


def next_page_path(request: Request, cursor: str) -> str:
    """This request's path and query with `cursor` in place of any cursor it
    had. The rest of the query string stays as the caller encoded it (a
    cursor is URL-safe as it is)."""
    query = request.scope["query_string"].decode("latin-1")
    kept = [part for part in query.split("&") if part and not part.startswith("cursor=")]
    # The route's own path, as request.url.path has it, without building
    # the whole URL (5 µs of a page's 250 in process).
    return f"{request.scope['path']}?{'&'.join([*kept, f'cursor={cursor}'])}"


# Routes are matched in this order: the most used first (docs/performance.md).


@router.get(
    USER_PATH,
    response_model=UserPublic,
    operation_id="get_user",
    summary="Get a user",
    responses={
        200: {"headers": ETAG_HEADER},
        304: {
            "description": "Not Modified: the user still has the ETag in If-None-Match.",
            "headers": ETAG_HEADER,
        },
        **problem_responses(401, 404, 422, 429, 503),
    },
)
async def get_user(
    user_id: UserId, database: DatabaseDep, if_none_match: IfNoneMatch = None
) -> Response:
    async with database.read() as connection:
        user = await crud.get_user(connection=connection, user_id=user_id)
    headers = {"ETag": etag(user.version)}
    unchanged = if_none_match_condition(if_none_match)
    if unchanged is not None and unchanged.matches(user.version):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return json_bytes_response(user.json.encode(), headers=headers)


@router.get(
    "",
    response_model=UserPage,
    operation_id="list_users",
    summary="List users",
    responses={200: {"headers": LINK_HEADER}, **problem_responses(401, 422, 429, 503)},
)
async def list_users(
    query: ListQuery, database: DatabaseDep, cursors: CursorCodecDep, request: Request
) -> Response:
    """A page of users in the order asked, filtered; `next_cursor` for the next page."""
    order = SortOrder.parse(query.sort)
    context = query.filter_fingerprint()
    after = None
    if query.cursor is not None:
        try:
            after = cursors.decode(query.cursor, order, context)
        except InvalidCursor as error:
            raise ValidationFailed(
                [{"loc": ["query", "cursor"], "msg": str(error), "type": "cursor_invalid"}]
            ) from None
    async with database.read(heavy=crud.may_scan(query, order)) as connection:
        page = await crud.list_users(connection=connection, query=query, order=order, after=after)
    next_cursor = None
    headers = {}
    if page.more:
        last = page.resume_after or order.key_of(orjson.loads(page.users[-1]))
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
    summary="Create a user",
    responses={
        201: {"headers": {**ETAG_HEADER, **LOCATION_HEADER, **REPLAYED_HEADER}},
        **problem_responses(401, 403, 409, 413, 415, 422, 429, 503),
        **IDEMPOTENCY_QUOTA_RESPONSE,
    },
)
async def create_user(
    body: UserCreate, database: DatabaseDep, idempotency: IdempotencyDep, source: ChangeSourceDep
) -> Response:
    # A create is one statement, whole on its own, unless its answer is kept too.
    writes = database.statements() if idempotency.claim is None else database.transaction()
    async with writes as connection:
        user = await crud.create_user(connection=connection, data=body, source=source)
        response = user_response(user, status.HTTP_201_CREATED, Location=f"/users/{user['id']}")
        await idempotency.save(response, connection=connection, shows=[uuid.UUID(user["id"])])
    metrics.USERS_CREATED.inc()
    return response


@router.patch(
    USER_PATH,
    response_model=UserPublic,
    operation_id="update_user",
    summary="Change some of a user's fields",
    responses={
        200: {"headers": ETAG_HEADER},
        **problem_responses(401, 403, 404, 409, 412, 413, 415, 422, 429, 503),
    },
)
async def update_user(
    user_id: UserId,
    body: UserUpdate,
    database: DatabaseDep,
    source: ChangeSourceDep,
    if_match: IfMatch = None,
) -> Response:
    """Only the fields sent change (a JSON merge patch)."""
    async with database.statements() as connection:
        user = await crud.update_user(
            connection=connection,
            user_id=user_id,
            fields=body.model_dump(include=body.model_fields_set),
            expected=if_match_condition(if_match),
            source=source,
        )
    metrics.USERS_UPDATED.inc()
    return user_response(user)


@router.put(
    USER_PATH,
    response_model=UserPublic,
    operation_id="replace_user",
    summary="Replace a user's fields",
    responses={
        200: {"headers": ETAG_HEADER},
        **problem_responses(401, 403, 404, 409, 412, 413, 415, 422, 429, 503),
    },
)
async def replace_user(
    user_id: UserId,
    body: UserReplace,
    database: DatabaseDep,
    source: ChangeSourceDep,
    if_match: IfMatch = None,
) -> Response:
    async with database.statements() as connection:
        user = await crud.update_user(
            connection=connection,
            user_id=user_id,
            fields=body.model_dump(),
            expected=if_match_condition(if_match),
            source=source,
        )
    metrics.USERS_UPDATED.inc()
    return user_response(user)


@router.delete(
    USER_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="delete_user",
    summary="Delete a user",
    responses=problem_responses(401, 403, 404, 412, 422, 429, 503),
)
async def delete_user(
    user_id: UserId, database: DatabaseDep, source: ChangeSourceDep, if_match: IfMatch = None
) -> Response:
    """Also erases the user's name and email from their earlier changes and
    from stored Idempotency-Key answers."""
    async with database.transaction() as connection:
        await crud.delete_user(
            connection=connection,
            user_id=user_id,
            expected=if_match_condition(if_match),
            source=source,
        )
    metrics.USERS_DELETED.inc()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/batch",
    status_code=status.HTTP_201_CREATED,
    response_model=UserBatchPublic,
    operation_id="create_users",
    summary="Create users, all or none",
    responses={
        201: {"headers": REPLAYED_HEADER},
        **problem_responses(401, 403, 409, 413, 415, 422, 429, 503),
        **IDEMPOTENCY_QUOTA_RESPONSE,
    },
)
async def create_users(
    body: UserBatchCreate,
    database: DatabaseDep,
    idempotency: IdempotencyDep,
    source: ChangeSourceDep,
) -> Response:
    """Create 1-1000 users, all or nothing; they come back in the order sent."""
    async with database.transaction() as connection:
        created = await crud.create_users(connection=connection, data=body.users, source=source)
        response = JSONResponse({"items": created}, status_code=status.HTTP_201_CREATED)
        shows = [uuid.UUID(user["id"]) for user in created]
        await idempotency.save(response, connection=connection, shows=shows)
    metrics.USERS_CREATED.inc(len(created))
    return response


FEED_CONTEXT = "changes"


def _position(cursors: CursorCodec, cursor: str | None, context: str) -> int | None:
    if cursor is None:
        return None
    try:
        return cursors.decode_position(cursor, context)
    except InvalidCursor as error:
        raise ValidationFailed(
            [{"loc": ["query", "cursor"], "msg": str(error), "type": "cursor_invalid"}]
        ) from None


@router.get(
    "/changes",
    response_model=ChangePage,
    operation_id="list_changes",
    summary="Follow the changes to users",
    responses=problem_responses(401, 410, 422, 503),
)
async def list_changes(
    query: ChangesQuery, database: DatabaseDep, cursors: CursorCodecDep, settings: SettingsDep
) -> Response:
    """Every change to every user, in commit order: follow `next_cursor` (always
    present) to see each change exactly once. With `wait`, an empty page is
    answered when a change commits or the time is up. A cursor whose changes
    are past retention is 410 `cursor_expired`."""
    after = _position(cursors, query.cursor, FEED_CONTEXT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(query.wait, settings.changes_max_wait_seconds)
    signal = database.commits
    while True:
        committed = signal.current()  # before reading: a commit meanwhile sets it
        page = await changes.read_feed(database=database, after=after, limit=query.limit)
        if page.expired:
            raise CursorExpired()
        remaining = deadline - loop.time()
        if page.items or remaining <= 0:
            break
        after = page.position
        # No connection is held while waiting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(committed.wait(), min(remaining, changes.RECHECK_SECONDS))
    body = {
        "items": page.items,
        "next_cursor": cursors.encode_position(FEED_CONTEXT, page.position),
    }
    return json_bytes_response(orjson.dumps(body))


@router.get(
    USER_PATH + "/history",
    response_model=HistoryPage,
    operation_id="get_user_history",
    summary="A user's changes, newest first",
    responses={200: {"headers": LINK_HEADER}, **problem_responses(401, 404, 422, 503)},
)
async def user_history(
    user_id: UserId,
    query: HistoryListQuery,
    database: DatabaseDep,
    cursors: CursorCodecDep,
    request: Request,
) -> Response:
    """Who changed the user, when and what, newest first; a deleted user's
    history stays (without their name and email)."""
    context = f"history|{user_id}"
    before = _position(cursors, query.cursor, context)
    async with database.read() as connection:
        page = await changes.read_history(
            connection=connection, user_id=user_id, before=before, limit=query.limit
        )
        if not page.items and before is None:
            await crud.get_user(connection=connection, user_id=user_id)  # 404 if unknown
    next_cursor = None
    headers = {}
    if page.more:
        next_cursor = cursors.encode_position(context, page.items[-1]["seq"])
        headers["Link"] = f'<{next_page_path(request, next_cursor)}>; rel="next"'
    body = {"items": page.items, "next_cursor": next_cursor}
    return json_bytes_response(orjson.dumps(body), headers=headers)
