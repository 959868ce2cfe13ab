"""The operators' HTTP API (FastAPI): runs from the projection, and the commands.

Every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (401 without
a known token). A role too low for the route is 403; a run of a tenant the token
does not cover is 404, exactly as an absent one, so a token learns nothing of
other tenants. Routes are plain functions: FastAPI runs them in its thread pool,
so the synchronous database calls never block the service's event loop.

Each thread-pool hop costs a request a wake-up of a thread and of the loop (there were
four per request: the token's lookup, the role check, the query, and FastAPI's check
and serialisation of the returned model). So the dependencies that do no I/O are
``async`` (they run on the loop), and the two hot reads (the runs list and one run)
check the token in the same hop and on the same connection as their query and return
their JSON ready-made: one hop and one connection per request. Why not a cache of
tokens instead: a revoked token must fail on its very next request (docs/security.md),
and the lookup, by the digest's unique index on a connection already open, costs a
fraction of a millisecond; a cache would save that and cost seconds of revocation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response, status
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy.engine import Connection, Engine, RowMapping
from starlette.concurrency import run_in_threadpool

from podium_api import audit, projection, queries, run_view
from podium_api.console_static import mount_console
from podium_api.live import Changes, Stream
from podium_api.segments import KeepEncodedSeparators
from podium_api.service import Cancelled, Commands, Submitted
from podium_api.tokens import Principal, Role, authenticate
from podium_api.traces import TraceSource
from podium_contracts import Budget, TaskSubmitted
from podium_contracts.models import INT32_MAX, INT32_MIN

if TYPE_CHECKING:  # the routes' modules import this one (its roles)
    from podium_api.routes_dlq import DlqSource

VERSION = "0.1.0"


class UsageView(BaseModel):
    tokens_in: int = Field(description="prompt tokens")
    tokens_out: int = Field(description="completion tokens")
    cost_usd: float


class StepView(BaseModel):
    step_id: str
    status: str = Field(description="completed | failed | retrying | abandoned | pending")
    capability: str | None
    pool: str | None
    attempts: int = Field(description="0 while pending")
    duration_ms: float | None = Field(description="of the last attempt")
    total_duration_ms: float = Field(description="of every attempt seen")
    first_at: datetime | None = Field(description="null while pending")
    updated_at: datetime | None = Field(description="null while pending")
    output: Any = None
    error: dict[str, Any] | None
    usage: UsageView | None
    retry_due_at: datetime | None
    dlq: dict[str, Any] | None
    depends_on: list[str] = Field(
        default_factory=list, description="the steps it needs (the DAG's edges)"
    )


class RunSummary(BaseModel):
    task_id: str
    tenant: str | None = Field(description="unknown until the submission is seen")
    workflow: str | None
    workflow_version: int | None
    subject: str | None
    status: str = Field(description=" | ".join(projection.STATUSES))
    created_at: datetime
    accepted_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    cancel_requested_at: datetime | None
    error: dict[str, Any] | None
    usage: UsageView | None = Field(description="what the outcome reported (sum of the steps)")
    dlq: dict[str, Any] | None


class RunDetail(RunSummary):
    input: dict[str, Any] | None
    output: Any = None
    steps: list[StepView]


class RunPage(BaseModel):
    items: list[RunSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class SubmitRequest(BaseModel):
    """A task, as TaskSubmitted has it; the tenant defaults to the token's only one."""

    task_id: str = Field(min_length=1, max_length=200, description="idempotency key")
    workflow: str = Field(min_length=1, max_length=200)
    # TaskSubmitted's bounds, stated here too so the OpenAPI document tells them.
    workflow_version: int | None = Field(default=None, ge=1, le=INT32_MAX)
    input: dict[str, Any] = Field(default_factory=dict)
    tenant: str | None = Field(default=None, min_length=1, max_length=200)
    subject: str | None = Field(default=None, max_length=200)
    priority: int = Field(default=0, ge=INT32_MIN, le=INT32_MAX)
    deadline: datetime | None = None
    budget: Budget = Field(default_factory=Budget)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("input", "metadata")
    @classmethod
    def _encodable(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The message is encoded with orjson: an integer beyond 64 bits (or nesting
        # deeper than it goes) is a 422 here, not a 500 when it is published.
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"not JSON a message can carry: {exc}") from exc
        return value


class Accepted(BaseModel):
    task_id: str
    status: str = Field(description="published: sent now; exists: submitted before")
    location: str


class CancelRequest(BaseModel):
    reason: str = Field(default="", max_length=1000)


class CancelAccepted(BaseModel):
    task_id: str
    status: str = "cancel_requested"


class DeadLetterGroup(BaseModel):
    reason: str = Field(description="the DLQ reason (podium-dlq-reason)")
    error_class: str | None
    error_type: str | None
    count: int


class DeadLetterTopic(BaseModel):
    topic: str
    count: int
    oldest: datetime | None = Field(description="when its oldest record was dead-lettered")
    newest: datetime | None
    groups: list[DeadLetterGroup] = Field(description="counts by reason and error, most first")


class DeadLetterSummary(BaseModel):
    topics: list[DeadLetterTopic]


class Health(BaseModel):
    status: str


def _time(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _unwrapped(v: Any) -> Any:
    return v["value"] if isinstance(v, dict) and "value" in v else None


_SUMMARY_FIELDS = tuple(RunSummary.model_fields)


def _summary_fields(row: RowMapping) -> dict[str, Any]:
    # A dict first: a RowMapping's ``in`` and ``[]`` were a fifth of a list's CPU.
    values = dict(row)
    fields = {k: values[k] for k in _SUMMARY_FIELDS if k in values}
    for k in ("created_at", "accepted_at", "finished_at", "updated_at", "cancel_requested_at"):
        fields[k] = _time(values[k])
    fields["usage"] = run_view.usage_view(values["usage"])
    return fields


def _step(row: Mapping[str, Any]) -> StepView:
    fields = {k: row[k] for k in StepView.model_fields}
    for k in ("first_at", "updated_at", "retry_due_at"):
        fields[k] = _time(row[k])
    fields["output"] = _unwrapped(row["output"])
    fields["usage"] = run_view.usage_view(row["usage"])
    return StepView(**fields)


def _since(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


_bearer = HTTPBearer(auto_error=False, description="a token from `podium_api token create`")


async def _token(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The bearer token a request presents (not checked yet); 401 without one."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return creds.credentials


def authorized(conn: Connection, token: str, role: Role) -> Principal:
    """The principal of ``token`` when it may act as ``role``: 401 for an unknown or
    revoked token, 403 for a role too low."""
    who = authenticate(conn, token)
    if who is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown or revoked token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not who.may(role):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {role} role")
    return who


def _principal(request: Request, token: Annotated[str, Depends(_token)]) -> Principal:
    """The caller of a request, from its bearer token; 401 without a known one."""
    engine: Engine = request.app.state.engine
    with engine.connect() as conn:
        return authorized(conn, token, "viewer")


def _requires(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(who: Annotated[Principal, Depends(_principal)]) -> Principal:
        if not who.may(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {role} role")
        return who

    return check


def _json(model: BaseModel) -> Response:
    """A model as the response, serialised here. A sync route that returns a model has
    FastAPI validate and serialise it again in one more thread-pool hop; a Response is
    sent as it is (the route's ``response_model`` still documents it)."""
    return Response(model.model_dump_json(), media_type="application/json")


def read_engine(engine: Engine) -> Engine:
    """``engine`` for reads on PostgreSQL without a transaction: that spares a request a
    BEGIN and a ROLLBACK, two of its round trips. SQLite begins none for a read anyway
    (and its reset from autocommit would add a PRAGMA to each connection's return)."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


# A route given the token alone checks it itself, with its query (see the docstring).
Token = Annotated[str, Depends(_token)]
Viewer = Annotated[Principal, Depends(_requires("viewer"))]
Submitter = Annotated[Principal, Depends(_requires("submitter"))]
Operator = Annotated[Principal, Depends(_requires("operator"))]


def create_app(
    engine: Engine,
    commands: Commands,
    *,
    notify: Callable[[], None] = lambda: None,
    page_max: int = 200,
    changes: Changes | None = None,
    heartbeat_s: float = 15.0,
    dead_letters: Callable[[Principal], Awaitable[list[dict[str, Any]]]] | None = None,
    dlq: DlqSource | None = None,
    traces: TraceSource | None = None,
) -> FastAPI:
    """The API over ``engine`` (the api's database); ``notify`` wakes the outbox relay,
    ``changes`` the live streams (the projection notifies the same one);
    ``dead_letters`` reads the DLQ summaries a principal may see, ``dlq`` a DLQ's
    records (and replays them), ``traces`` the runs' traces (the local span store or
    an OTLP backend's query API)."""
    from podium_api.routes_audit import audit_routes
    from podium_api.routes_dlq import dlq_routes

    live = changes or Changes()
    app = FastAPI(
        title="podium API",
        version=VERSION,
        description="Runs of podium's tasks, read from the api service's projection of "
        "the topics, and the commands operators need (submit, cancel).",
    )
    # A task id may hold '/': route on the segments the client sent (podium_api.segments).
    app.add_middleware(KeepEncodedSeparators)
    app.state.engine = engine
    reads = read_engine(engine)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI validates a route's parameters before it runs, and the hot reads check
        # their token inside the route (one hop, see the docstring): an unknown token with
        # a bad parameter would be told 422, the route's shape, before 401. So a request
        # that fails validation has its token checked first; only this error path pays it.
        creds = await _bearer(request)
        token = creds.credentials if creds and creds.scheme.lower() == "bearer" else None

        def known(token: str) -> bool:
            with reads.connect() as conn:
                return authenticate(conn, token) is not None

        if token is None or not await run_in_threadpool(known, token):
            why = "a bearer token is required" if token is None else "unknown or revoked token"
            return JSONResponse(
                {"detail": why},
                status_code=status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await request_validation_exception_handler(request, exc)

    app.state.changes = live  # closed by the HTTP server when it stops
    stream = Stream(
        engine,
        live,
        render=lambda row: RunSummary(**_summary_fields(row)).model_dump_json(),
        heartbeat_s=heartbeat_s,
    )

    def latest_change() -> int:
        with engine.connect() as conn:
            return queries.latest_change(conn)

    @app.get("/healthz", tags=["health"])
    def healthz() -> Health:
        """Anonymous: the process serves HTTP."""
        return Health(status="ok")

    @app.get(
        "/v1/runs",
        tags=["runs"],
        response_model=RunPage,
        responses={400: {"description": "not a cursor of this API"}},
    )
    def list_runs(
        token: Token,
        status_: Annotated[str | None, Query(alias="status")] = None,
        workflow: str | None = None,
        tenant: str | None = None,
        subject: str | None = None,
        since: Annotated[datetime | None, Query(description="created at or after")] = None,
        until: Annotated[datetime | None, Query(description="created before")] = None,
        q: Annotated[str | None, Query(max_length=200, description="in the task id")] = None,
        cursor: Annotated[str | None, Query(max_length=1000)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> Response:
        """Runs the token's tenants own, newest first; pass ``next_cursor`` for more."""
        f = queries.RunFilter(
            status=status_,
            workflow=workflow,
            tenant=tenant,
            subject=subject,
            since=_since(since),
            until=_since(until),
            q=q,
        )
        try:
            with reads.connect() as conn:
                who = authorized(conn, token, "viewer")
                rows, following = queries.list_runs(
                    conn, who, f, limit=min(limit, page_max), cursor=cursor
                )
        except queries.BadCursor as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        return _json(
            RunPage(items=[RunSummary(**_summary_fields(r)) for r in rows], next_cursor=following)
        )

    @app.get(
        "/v1/runs/{task_id:segment}",
        tags=["runs"],
        response_model=RunDetail,
        responses={404: {"description": "no such run"}},
    )
    def get_run(token: Token, task_id: str) -> Response:
        """One run with its input, output, usage and steps (a DAG: each step names the
        steps it depends on; planned steps not begun yet are ``pending``)."""
        with reads.connect() as conn:
            found = queries.get_run(conn, authorized(conn, token, "viewer"), task_id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such run")
        run, steps = found
        return _json(
            RunDetail(
                **(
                    _summary_fields(run)
                    | {"usage": run_view.run_usage(run["usage"], (s["usage"] for s in steps))}
                ),
                input=run["input"],
                output=_unwrapped(run["output"]),
                steps=[_step(s) for s in run_view.dag_steps(run["plan"], steps)],
            )
        )

    @app.post(
        "/v1/tasks",
        tags=["tasks"],
        status_code=status.HTTP_202_ACCEPTED,
        responses={
            403: {"description": "role too low, or a tenant the token does not cover"},
            409: {"description": "the task id belongs to another tenant's run"},
            422: {"description": "not a valid task"},
        },
    )
    def submit(who: Submitter, body: SubmitRequest, response: Response) -> Accepted:
        """Submit a task (TaskSubmitted through the outbox); idempotent by task id."""
        tenant = body.tenant
        if tenant is None:
            if who.every_tenant or len(who.tenants) != 1:
                tenant = "default" if who.sees("default") else None
            else:
                tenant = who.tenants[0]
        if tenant is None or not who.sees(tenant):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "the token does not cover that tenant")
        try:
            task = TaskSubmitted(**(body.model_dump() | {"tenant": tenant}))
        except ValidationError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, exc.errors(include_url=False)
            ) from exc
        with engine.begin() as conn:
            outcome = commands.submit(conn, who, task)
        if outcome is Submitted.CONFLICT:
            raise HTTPException(status.HTTP_409_CONFLICT, "task id already taken")
        if outcome is Submitted.PUBLISHED:
            notify()
            live.notify()
        # Percent-encoded: a task id may hold any character, a header only latin-1.
        location = f"/v1/runs/{quote(task.task_id, safe='')}"
        response.headers["Location"] = location
        return Accepted(task_id=task.task_id, status=outcome.value, location=location)

    @app.post(
        "/v1/runs/{task_id:segment}/cancel",
        tags=["runs"],
        status_code=status.HTTP_202_ACCEPTED,
        responses={
            404: {"description": "no such run"},
            409: {"description": "the run has finished"},
        },
    )
    def cancel(who: Viewer, task_id: str, body: CancelRequest | None = None) -> CancelAccepted:
        """Ask the router to cancel a run (operators only); recorded with who asked, a
        refused attempt too."""
        if not who.may("operator"):
            with engine.begin() as conn:
                tenant = audit.run_tenant(conn, who, task_id)
                audit.refused(conn, who, "cancel", task_id, "operator", tenant)
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the operator role")
        reason = body.reason if body is not None else ""
        with engine.begin() as conn:
            outcome = commands.cancel(conn, who, task_id, reason or f"by token {who.token_id}")
            detail = {"reason": reason, "result": outcome.value}
            tenant = audit.run_tenant(conn, who, task_id)
            audit.record(conn, who, "cancel", task_id, detail, tenant=tenant)
        if outcome is Cancelled.NOT_FOUND:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such run")
        if outcome is Cancelled.FINISHED:
            raise HTTPException(status.HTTP_409_CONFLICT, "the run has finished")
        notify()
        live.notify()
        return CancelAccepted(task_id=task_id)

    @app.get(
        "/v1/dead-letters",
        tags=["dead letters"],
        responses={503: {"description": "this api reads no dead letters"}},
    )
    async def list_dead_letters(who: Viewer) -> DeadLetterSummary:
        """Per dead-letter topic: count, oldest, newest and counts by error, of the
        records of the token's tenants (records naming no tenant: ``*`` tokens only).
        Their records: ``/v1/dead-letters/{topic}/records``; replay them with
        ``POST /v1/dead-letters/{topic}/replay`` (operators)."""
        if dead_letters is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no dead letters here")
        found = await dead_letters(who)
        return DeadLetterSummary(topics=[DeadLetterTopic(**t) for t in found])

    @app.get(
        "/v1/events",
        tags=["live"],
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "Server-Sent Events: `event: run`, `id:` the change number, "
                "`data:` the run's summary as /v1/runs has it; `event: dead_letter` for a step "
                "dead-lettered (`data:` topic, id, task_id, step_id, tenant, workflow, error, "
                "at); a comment every ~15 s",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            400: {"description": "a Last-Event-ID this API did not send"},
        },
    )
    async def events(
        who: Viewer,
        status_: Annotated[str | None, Query(alias="status")] = None,
        workflow: str | None = None,
        tenant: str | None = None,
        after: Annotated[
            int | None, Query(ge=0, description="resume after this event id (the header wins)")
        ] = None,
        last_event_id: Annotated[
            str | None, Header(max_length=40, description="the last event id received")
        ] = None,
    ) -> StreamingResponse:
        """Changes of the token's tenants' runs, live: after ``Last-Event-ID`` (or
        ``?after=``) when given, else from now on. A run changed several times while
        the client was away is sent once, as it is now."""
        start = after
        if last_event_id is not None:
            try:
                start = int(last_event_id)
            except ValueError:
                start = -1
            if start < 0:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, "not an event id of this API")
        if start is None:
            # Read before the response starts: once its headers are out, every later
            # change is in the stream.
            start = await run_in_threadpool(latest_change)
        f = queries.ChangeFilter(status=status_, workflow=workflow, tenant=tenant)
        return StreamingResponse(
            stream.events(who, f, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    app.include_router(dlq_routes(engine, dlq))
    app.include_router(audit_routes(engine))
    from podium_api import routes_run  # it imports this module's roles

    app.include_router(routes_run.router(engine, traces))
    mount_console(app)
    from podium_api import routes_pools  # imports this module's auth dependencies

    app.include_router(routes_pools.router)
    return app
