"""One run, complete: its history (the router's entries, with cause and next action)
and its trace (the spans of every service that worked on it). Both answer 404 for a
run the token may not see, exactly as for an absent one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine, RowMapping

from podium_api import queries
from podium_api.app import Viewer
from podium_api.traces import TraceSource, TraceUnavailable


class HistoryEntry(BaseModel):
    seq: int = Field(description="its place in the run's history, from 1")
    at: datetime
    kind: str = Field(description="accepted, step_dispatched, step_completed, retry_scheduled, ...")
    step: str | None = Field(description="the step it is about, if any")
    cause: str = Field(description="why (secrets masked)")
    next_action: str = Field(description="what happens next, when the router knows")
    detail: dict[str, Any] = Field(description="attempt, pool, capability, model, ... it tells")


class RunHistory(BaseModel):
    task_id: str
    entries: list[HistoryEntry]


class SpanView(BaseModel):
    trace_id: str
    span_id: str
    parent_id: str | None = Field(description="null (or a span not here) for a root")
    name: str
    service: str
    start: datetime
    end: datetime
    duration_ms: float
    status: str = Field(description="OK | ERROR | UNSET")
    attributes: dict[str, Any]


class RunTrace(BaseModel):
    task_id: str
    trace_ids: list[str] = Field(description="earliest first; empty when no span is known")
    source: str = Field(description="local (the span files) | otlp (the configured backend)")
    spans: list[SpanView] = Field(description="trace by trace, each in start order")


def history_entry(row: RowMapping) -> HistoryEntry:
    return HistoryEntry(
        seq=row["seq"],
        at=datetime.fromtimestamp(row["at"], UTC),
        kind=row["kind"],
        step=row["step_id"],
        cause=row["cause"],
        next_action=row["next_action"],
        detail=row["detail"] or {},
    )


def router(engine: Engine, traces: TraceSource | None) -> APIRouter:
    api = APIRouter(tags=["runs"])

    @api.get("/v1/runs/{task_id:segment}/history", responses={404: {"description": "no such run"}})
    def run_history(who: Viewer, task_id: str) -> RunHistory:
        """The run's history as the router wrote it: what happened, why and what next."""
        with engine.connect() as conn:
            rows = queries.get_history(conn, who, task_id)
        if rows is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such run")
        return RunHistory(task_id=task_id, entries=[history_entry(r) for r in rows])

    @api.get(
        "/v1/runs/{task_id:segment}/trace",
        responses={
            404: {"description": "no such run"},
            502: {"description": "the trace backend did not answer"},
            503: {"description": "this api reads no traces"},
        },
    )
    def run_trace(who: Viewer, task_id: str) -> RunTrace:
        """The run's spans across every service: from the local span store, or from
        the query API ``PODIUM_API_TRACE_URL`` names (Jaeger's)."""
        with engine.connect() as conn:
            found = queries.get_run(conn, who, task_id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such run")
        if traces is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no traces here")
        try:
            trace = traces.trace(task_id, found[0]["created_at"])
        except TraceUnavailable as exc:
            raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from exc
        return RunTrace(
            task_id=task_id,
            trace_ids=trace.trace_ids,
            source=trace.source,
            spans=[SpanView(**s) for s in trace.spans],
        )

    return api
