"""``GET /v1/pools`` and ``GET /v1/workflows`` (viewer): what runs the steps and what
the steps are. Neither is a tenant's data: every viewer sees all pools and workflows.

Wired by ``configure`` (the composition root); an app that was not given a pool
reader answers 503 on ``/v1/pools``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, status
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from podium_api.app import Viewer
from podium_api.pools import PoolsUnavailable
from podium_api.workflows import list_workflows


class PartitionLag(BaseModel):
    partition: int
    lag: int = Field(description="records of the partition the group has not committed")


class ReplicaBreaker(BaseModel):
    state: str = Field(description="closed | open | half_open")
    failures: int
    retry_in_s: float | None = Field(description="open: seconds until a trial call")


class BreakerView(BaseModel):
    state: str = Field(description="the worst among the replicas: closed | half_open | open")
    replicas: dict[str, ReplicaBreaker]


class RateLimitView(BaseModel):
    per_s: float | None = Field(description="calls/s of the whole pool; null: unlimited")
    burst: int | None


class PoolMember(BaseModel):
    member_id: str
    client_id: str = Field(description="empty on Tansu, whose member id starts with it")
    host: str


class ReplicaReport(BaseModel):
    replica: str
    reported_at: datetime
    concurrency: int


class PoolView(BaseModel):
    name: str
    topic: str
    replicas: int = Field(description="members of the pool's consumer group")
    members: list[PoolMember]
    lag: list[PartitionLag]
    total_lag: int
    breakers: dict[str, BreakerView] = Field(description="by provider, from live replicas")
    rate_limit: RateLimitView | None = Field(description="null: no replica has reported")
    reports: list[ReplicaReport] = Field(description="the live replicas' latest reports")


class PoolList(BaseModel):
    pools: list[PoolView]


class WorkflowStep(BaseModel):
    id: str
    uses: str | None
    pool: str | None
    needs: list[str]


class WorkflowVersion(BaseModel):
    version: int
    description: str
    file: str
    steps: list[WorkflowStep]
    problem: str | None = Field(description="why the file is not a workflow, if it is not")


class WorkflowView(BaseModel):
    name: str
    latest: int
    versions: list[WorkflowVersion] = Field(description="newest first")


class WorkflowList(BaseModel):
    workflows: list[WorkflowView]


router = APIRouter(tags=["pools"])


def configure(
    app: FastAPI,
    *,
    pools: Callable[[], Awaitable[list[dict[str, Any]]]] | None,
    workflows: str,
) -> FastAPI:
    """Give ``app``'s routes here the pool reader and the workflow folders."""
    app.state.pools = pools
    app.state.workflow_folders = workflows
    return app


@router.get(
    "/v1/pools",
    responses={503: {"description": "the broker could not be asked, or no pool reader"}},
)
async def get_pools(who: Viewer, request: Request) -> PoolList:
    """Executor pools: replicas, lag per partition, breakers and rate limits."""
    pools = getattr(request.app.state, "pools", None)
    if pools is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no pools here")
    try:
        found = await pools()
    except PoolsUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    return PoolList(pools=[PoolView(**p) for p in found])


@router.get("/v1/workflows")
async def get_workflows(who: Viewer, request: Request) -> WorkflowList:
    """Workflows in the workflow folders, each with its versions."""
    folders: str = getattr(request.app.state, "workflow_folders", "")
    found = await run_in_threadpool(list_workflows, folders)
    return WorkflowList(workflows=[WorkflowView(**w) for w in found])
