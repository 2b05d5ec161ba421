"""The /users routes: thin functions that read like the contract."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.security import HTTPBearer

from users_service import crud
from users_service.api.deps import (
    USER_PATH,
    CursorCodecDep,
    IdempotentAnswerDep,
    IfMatchDep,
    IfNoneMatchDep,
    SessionDep,
    UserIdDep,
)
from users_service.api.routing import MERGE_PATCH_JSON, JSONBodyRoute
from users_service.db import write_transaction
from users_service.errors import problem_responses, validation_failed
from users_service.jsonio import JSONResponse
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
from users_service.preconditions import etag

# The API keys themselves are checked by auth.ApiKeyMiddleware before any
# route runs; this only declares the scheme in the OpenAPI document.
bearer = HTTPBearer(
    auto_error=False,
    description="An API key from API_KEYS or API_READ_KEYS, when the service has them.",
)
router = APIRouter(
    prefix="/users",
    tags=["users"],
    route_class=JSONBodyRoute,
    dependencies=[Depends(bearer)],
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


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    operation_id="create_user",
    responses={
        201: {"headers": {**ETAG_HEADER, **LOCATION_HEADER, **REPLAYED_HEADER}},
        **problem_responses(401, 403, 409, 413, 415, 422, 503),
    },
)
def create_user(body: UserCreate, session: SessionDep, idempotent: IdempotentAnswerDep) -> Response:
    with write_transaction(session):
        user = crud.create_user(session=session, data=body)
        response = user_response(user, status.HTTP_201_CREATED, Location=f"/users/{user['id']}")
        idempotent.save(response, session=session)
    return response


@router.post(
    "/batch",
    status_code=status.HTTP_201_CREATED,
    response_model=UserBatchPublic,
    operation_id="create_users",
    responses={
        201: {"headers": REPLAYED_HEADER},
        **problem_responses(401, 403, 409, 413, 415, 422, 503),
    },
)
def create_users(
    body: UserBatchCreate, session: SessionDep, idempotent: IdempotentAnswerDep
) -> Response:
    """Create 1-1000 users, all or nothing; they come back in the order sent."""
    with write_transaction(session):
        created = crud.create_users(session=session, data=body.users)
        response = JSONResponse({"items": created}, status_code=status.HTTP_201_CREATED)
        idempotent.save(response, session=session)
    return response


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
)
def list_users(
    query: Annotated[UserListQuery, Query()],
    request: Request,
    session: SessionDep,
    cursors: CursorCodecDep,
) -> Response:
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
    rows, more, total = crud.list_users(session=session, query=query, order=order, after=after)
    next_cursor = cursors.encode(order, context, order.key_of(rows[-1])) if more else None
    page: dict[str, Any] = {
        "items": [crud.to_record(row) for row in rows],
        "next_cursor": next_cursor,
    }
    if total is not None:
        page["total"] = total
    headers = {}
    if next_cursor is not None:
        next_url = request.url.include_query_params(cursor=next_cursor)
        headers["Link"] = f'<{next_url.path}?{next_url.query}>; rel="next"'
    return JSONResponse(page, headers=headers)


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
)
def get_user(user_id: UserIdDep, session: SessionDep, if_none_match: IfNoneMatchDep) -> Response:
    user = crud.get_user(session=session, user_id=user_id)
    if if_none_match is not None and if_none_match.matches(user["version"]):
        return Response(
            status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag(user["version"])}
        )
    return user_response(user)


@router.put(
    USER_PATH,
    response_model=UserPublic,
    operation_id="replace_user",
    responses={
        200: {"headers": ETAG_HEADER},
        **problem_responses(401, 403, 404, 409, 412, 413, 415, 422, 503),
    },
)
def replace_user(
    user_id: UserIdDep, body: UserReplace, session: SessionDep, if_match: IfMatchDep
) -> Response:
    user = crud.update_user(
        session=session, user_id=user_id, changes=body.model_dump(), expected=if_match
    )
    return user_response(user)


@router.patch(
    USER_PATH,
    response_model=UserPublic,
    operation_id="update_user",
    responses={
        200: {"headers": ETAG_HEADER},
        **problem_responses(401, 403, 404, 409, 412, 413, 415, 422, 503),
    },
    openapi_extra={
        "requestBody": {
            "content": {MERGE_PATCH_JSON: {"schema": {"$ref": "#/components/schemas/UserUpdate"}}}
        }
    },
)
def update_user(
    user_id: UserIdDep, body: UserUpdate, session: SessionDep, if_match: IfMatchDep
) -> Response:
    user = crud.update_user(
        session=session,
        user_id=user_id,
        changes=body.model_dump(include=body.model_fields_set),
        expected=if_match,
    )
    return user_response(user)


@router.delete(
    USER_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    operation_id="delete_user",
    responses=problem_responses(401, 403, 404, 412, 422, 503),
)
def delete_user(user_id: UserIdDep, session: SessionDep, if_match: IfMatchDep) -> Response:
    crud.delete_user(session=session, user_id=user_id, expected=if_match)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
