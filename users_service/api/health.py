"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as PROMETHEUS_TEXT
from pydantic import BaseModel, Field

from users_service.api.deps import DatabaseDep
from users_service.api.jsonio import JSONResponse
from users_service.api.routing import TypedRoute
from users_service.db.errors import DatabaseUnavailable
from users_service.metrics import exposition

router = APIRouter(tags=["health"], route_class=TypedRoute)


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    database: Literal["ok", "unreachable"]
    schema_: Literal["current", "behind", "ahead", "unknown"] = Field(alias="schema")


@router.get(
    "/healthz",
    response_model=Health,
    operation_id="check_health",
    summary="Check that the process is alive",
)
async def healthz() -> JSONResponse:
    """The process is alive. Touches no database."""
    return JSONResponse({"status": "ok"})


@router.get(
    "/metrics",
    operation_id="get_metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {PROMETHEUS_TEXT: {}}, "description": "Prometheus text format."}},
)
async def metrics() -> Response:
    """Request counts and durations, user writes, database pool use (docs/operations.md)."""
    return Response(exposition(), media_type=PROMETHEUS_TEXT)


@router.get(
    "/readyz",
    response_model=Readiness,
    operation_id="check_readiness",
    summary="Check that the service can serve",
    responses={503: {"model": Readiness, "description": "Not ready: the body says why."}},
)
async def readyz(database: DatabaseDep, request: Request) -> JSONResponse:
    """Ready when the database answers, through the connections requests use,
    and its schema is at the newest migration."""
    state = request.app.state
    reachable, schema = "ok", "unknown"
    try:
        schema = await database.schema_state(heads=state.schema_heads, known=state.schema_revisions)
    except DatabaseUnavailable:
        reachable = "unreachable"
    ready = reachable == "ok" and schema == "current"
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "database": reachable, "schema": schema},
        status_code=200 if ready else 503,
    )
