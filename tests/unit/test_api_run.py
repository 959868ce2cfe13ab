"""One run, complete, in-process: the history projected from TaskHistoryRecorded (in
order, numbered the same after a rebuild), the steps as a DAG from TaskAccepted's plan,
usage in the API's shape, and the trace from the span files or from a Jaeger-compatible
query API (a local HTTP server stands in for Jaeger); a run of another tenant is 404."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_api import projection, run_view, tokens
from podium_api.app import create_app
from podium_api.handlers import make_handler
from podium_api.migrations import HISTORY
from podium_api.service import Commands
from podium_api.settings import ApiSettings
from podium_api.state import history
from podium_api.traces import (
    JaegerTraces,
    LocalTraces,
    TraceSource,
    jaeger_spans,
    trace_source,
)
from podium_contracts import (
    Envelope,
    Event,
    PlannedStep,
    StepCompleted,
    TaskAccepted,
    TaskCompleted,
    TaskHistoryRecorded,
    TaskSubmitted,
    Usage,
)
from podium_shared import Topics, UnitOfWork
from podium_shared.migrations import open_database
from podium_shared.spans import task_spans
from tests.support.http_server import serving

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = open_database(f"sqlite:///{tmp_path / 'api.db'}", HISTORY)
    yield e
    e.dispose()


def app_client(engine: Engine, traces: TraceSource | None) -> httpx.AsyncClient:
    app = create_app(engine, Commands(Topics("p")), traces=traces)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api")


@pytest.fixture
async def client(engine: Engine, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(engine, LocalTraces(tmp_path)) as c:
        yield c


def token(engine: Engine, role: tokens.Role, *tenants: str) -> dict[str, str]:
    with engine.begin() as conn:
        _, secret = tokens.create(conn, role, list(tenants))
    return {"Authorization": f"Bearer {secret}"}


def entry(task_id: str, i: int, kind: str, **fields: Any) -> TaskHistoryRecorded:
    return TaskHistoryRecorded(task_id=task_id, at=T0 + timedelta(seconds=i), kind=kind, **fields)


STORY = [
    entry("t1", 0, "accepted", workflow_version=1, cause="submitted for chain v1"),
    entry(
        "t1",
        1,
        "step_dispatched",
        step_id="one",
        attempt=1,
        pool="default",
        capability="echo",
        cause="default pool",
        next="waiting for echo on pool default (timeout 600.0s, the default)",
    ),
    entry("t1", 2, "step_completed", step_id="one", attempt=1, pool="default", cause="2.0 ms"),
    entry("t1", 3, "step_dispatched", step_id="two", attempt=1, pool="default", next="waiting"),
]
PLAN = [
    PlannedStep(step_id="one", capability="echo"),
    PlannedStep(step_id="two", capability="echo", depends_on=["one"]),
    PlannedStep(step_id="three", capability="echo", depends_on=["two"]),
]


def project(engine: Engine, tenant: str = "acme", task_id: str = "t1") -> None:
    """A run of ``tenant`` half way: accepted with its plan, step one done, two running."""
    with engine.begin() as conn:
        projection.task_submitted(
            conn,
            TaskSubmitted(task_id=task_id, workflow="chain", tenant=tenant, input={"x": 1}),
            T0.timestamp(),
        )
        projection.task_accepted(
            conn,
            TaskAccepted(
                task_id=task_id, workflow="chain", accepted_at=T0, tenant=tenant, steps=PLAN
            ),
            T0.timestamp(),
        )
        projection.step_completed(
            conn,
            StepCompleted(
                task_id=task_id,
                step_id="one",
                capability="echo",
                pool="default",
                output={"x": 1},
                attempt=1,
                duration_ms=2.0,
                usage=Usage(cost_usd=0.5, prompt_tokens=10, completion_tokens=3),
            ),
            T0.timestamp() + 2,
        )
        for e in STORY:
            projection.task_history_recorded(conn, e.model_copy(update={"task_id": task_id}), 0.0)


def rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(history).order_by("task_id", "seq"))]


def test_history_entries_are_numbered_per_task_in_the_order_they_arrive(
    engine: Engine, tmp_path: Path
) -> None:
    interleaved = [e for pair in zip(STORY, STORY, strict=True) for e in pair]
    with engine.begin() as conn:
        for i, e in enumerate(interleaved):
            mine = e.model_copy(update={"task_id": "t1" if i % 2 == 0 else "t2"})
            projection.task_history_recorded(conn, mine, 0.0)
    got = rows(engine)
    assert [(r[0], r[1], r[3]) for r in got if r[0] == "t1"] == [
        ("t1", i + 1, e.kind) for i, e in enumerate(STORY)
    ]
    dispatched = got[1]
    assert dispatched[4:] == (
        "one",
        "default pool",
        "waiting for echo on pool default (timeout 600.0s, the default)",
        {"attempt": 1, "pool": "default", "capability": "echo"},
    )
    # A rebuild (a new database, the same topics) numbers them the same.
    again = open_database(f"sqlite:///{tmp_path / 'again.db'}", HISTORY)
    try:
        with again.begin() as conn:
            for i, e in enumerate(interleaved):
                mine = e.model_copy(update={"task_id": "t1" if i % 2 == 0 else "t2"})
                projection.task_history_recorded(conn, mine, 0.0)
        assert rows(again) == got
    finally:
        again.dispose()


def test_usage_in_the_api_shape_and_while_a_run_runs_the_sum_of_its_steps() -> None:
    stored = {"cost_usd": 0.25, "prompt_tokens": 7, "completion_tokens": 2}
    assert run_view.usage_view(stored) == {"tokens_in": 7, "tokens_out": 2, "cost_usd": 0.25}
    assert run_view.usage_view(None) is None
    assert run_view.run_usage(stored, [None]) == run_view.usage_view(stored)
    steps = [stored, None, {"cost_usd": 0.5, "prompt_tokens": 1, "completion_tokens": 1}]
    assert run_view.run_usage(None, steps) == {"tokens_in": 8, "tokens_out": 3, "cost_usd": 0.75}
    assert run_view.run_usage(None, [None, None]) is None


def test_the_dag_names_each_steps_needs_and_shows_the_steps_not_begun() -> None:
    plan = [p.model_dump() for p in PLAN]
    begun = [{"step_id": "two", "status": "retrying"}, {"step_id": "one", "status": "completed"}]
    got = run_view.dag_steps(plan, begun)
    assert [(s["step_id"], s["status"], s["depends_on"]) for s in got] == [
        ("two", "retrying", ["one"]),
        ("one", "completed", []),
        ("three", "pending", ["two"]),
    ]
    assert got[2]["attempts"] == 0 and got[2]["first_at"] is None
    # Without a plan (a router that published none) the begun steps, needing nothing known.
    assert [s["depends_on"] for s in run_view.dag_steps(None, begun)] == [[], []]


async def test_one_run_with_its_dag_usage_and_history_and_not_for_another_tenant(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    project(engine)
    mine, theirs = token(engine, "viewer", "acme"), token(engine, "viewer", "other")
    run = (await client.get("/v1/runs/t1", headers=mine)).json()
    assert run["input"] == {"x": 1} and run["output"] is None and run["error"] is None
    assert run["usage"] == {"tokens_in": 10, "tokens_out": 3, "cost_usd": 0.5}
    assert [(s["step_id"], s["status"], s["depends_on"]) for s in run["steps"]] == [
        ("one", "completed", []),
        ("two", "pending", ["one"]),
        ("three", "pending", ["two"]),
    ]
    assert run["steps"][0]["usage"] == {"tokens_in": 10, "tokens_out": 3, "cost_usd": 0.5}

    r = await client.get("/v1/runs/t1/history", headers=mine)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task_id"] == "t1"
    assert [(e["seq"], e["kind"], e["step"]) for e in body["entries"]] == [
        (1, "accepted", None),
        (2, "step_dispatched", "one"),
        (3, "step_completed", "one"),
        (4, "step_dispatched", "two"),
    ]
    first, second = body["entries"][:2]
    assert first["cause"] == "submitted for chain v1" and first["detail"] == {"workflow_version": 1}
    assert datetime.fromisoformat(first["at"]) == T0
    assert second["next_action"].startswith("waiting for echo")
    for path in ("/v1/runs/t1/history", "/v1/runs/t1/trace", "/v1/runs/nope/history"):
        assert (await client.get(path, headers=theirs)).status_code == 404, path
        assert (await client.get(path)).status_code == 401, path


async def test_a_completed_runs_usage_is_its_outcomes(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    project(engine)
    with engine.begin() as conn:
        projection.task_completed(
            conn,
            TaskCompleted(
                task_id="t1",
                workflow="chain",
                output={"x": 1},
                steps=[],
                usage=Usage(cost_usd=1.5, prompt_tokens=30, completion_tokens=9),
                accepted_at=T0,
                completed_at=T0 + timedelta(seconds=5),
                tenant="acme",
            ),
            T0.timestamp() + 5,
        )
    h = token(engine, "viewer", "acme")
    run = (await client.get("/v1/runs/t1", headers=h)).json()
    assert run["usage"] == {"tokens_in": 30, "tokens_out": 9, "cost_usd": 1.5}
    listed = (await client.get("/v1/runs", headers=h)).json()["items"]
    assert listed[0]["usage"] == run["usage"] and "steps" not in listed[0]


def span(
    trace: str, span_id: str, parent: str | None, name: str, service: str, at: int, **a: Any
) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": "INTERNAL",
        "service": service,
        "start_ns": at,
        "end_ns": at + 2_000_000,
        "status": "ERROR" if a.pop("error", False) else "UNSET",
        "attributes": a,
        "events": [],
    }


T_NS = int(T0.timestamp() * 1e9)
TRACE_A, TRACE_B, OTHER = "a" * 32, "b" * 32, "c" * 32
MINE = {"podium.task_id": "t1"}


def write_spans(home: Path) -> None:
    (home / "spans").mkdir(parents=True, exist_ok=True)
    router = [
        span(TRACE_A, "a1", None, "process tasks", "router", T_NS),
        span(TRACE_A, "a2", "a1", "router.route", "router", T_NS + 1, **MINE),
        # a second trace of the same task (a replay started later), and another task's
        span(
            TRACE_B, "b1", None, "router.route", "router", T_NS + 9_000, **{"podium.task_id": "t1"}
        ),
        span(OTHER, "c1", None, "router.route", "router", T_NS + 5, **{"podium.task_id": "t11"}),
    ]
    executor = [
        span(TRACE_A, "a3", "a2", "executor.call", "executor", T_NS + 3, error=True),
        span(OTHER, "c2", "c1", "executor.call", "executor", T_NS + 6),
    ]
    for name, spans in (("router-1", router), ("executor-2", executor)):
        lines = b"".join(orjson.dumps(s) + b"\n" for s in spans)
        (home / "spans" / f"{name}.jsonl").write_bytes(lines + b'{"torn')


def test_the_span_store_gives_a_tasks_traces_and_only_theirs(tmp_path: Path) -> None:
    write_spans(tmp_path)
    ids, spans = task_spans(tmp_path, "t1")
    assert ids == [TRACE_A, TRACE_B]
    assert sorted(s["span_id"] for s in spans) == ["a1", "a2", "a3", "b1"]
    assert task_spans(tmp_path, "nothing") == ([], [])
    assert task_spans(tmp_path / "no-home", "t1") == ([], [])


async def test_the_trace_from_the_span_files(
    engine: Engine, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    project(engine)
    h = token(engine, "viewer", "acme")
    empty = (await client.get("/v1/runs/t1/trace", headers=h)).json()
    assert empty == {"task_id": "t1", "trace_ids": [], "source": "local", "spans": []}
    write_spans(tmp_path)  # the client's LocalTraces reads tmp_path
    r = await client.get("/v1/runs/t1/trace", headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["trace_ids"] == [TRACE_A, TRACE_B] and body["source"] == "local"
    assert [(s["span_id"], s["parent_id"], s["service"]) for s in body["spans"]] == [
        ("a1", None, "router"),
        ("a2", "a1", "router"),
        ("a3", "a2", "executor"),
        ("b1", None, "router"),
    ]
    a3 = body["spans"][2]
    assert (a3["status"], a3["duration_ms"], a3["name"]) == ("ERROR", 2.0, "executor.call")
    assert datetime.fromisoformat(a3["end"]) - datetime.fromisoformat(a3["start"]) == timedelta(
        milliseconds=2
    )
    assert body["spans"][1]["attributes"] == {"podium.task_id": "t1"}


def jaeger_trace(trace_id: str, start_us: int) -> dict[str, Any]:
    return {
        "traceID": trace_id,
        "spans": [
            {
                "traceID": trace_id,
                "spanID": "s2",
                "operationName": "executor.call",
                "references": [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": "s1"}],
                "startTime": start_us + 10,
                "duration": 1500,
                "tags": [
                    {"key": "otel.status_code", "type": "string", "value": "ERROR"},
                    {"key": "podium.step_id", "type": "string", "value": "one"},
                ],
                "processID": "p2",
            },
            {
                "traceID": trace_id,
                "spanID": "s1",
                "operationName": "router.route",
                "references": [],
                "startTime": start_us,
                "duration": 4000,
                "tags": [{"key": "podium.task_id", "type": "string", "value": "t1"}],
                "processID": "p1",
            },
        ],
        "processes": {"p1": {"serviceName": "router"}, "p2": {"serviceName": "executor"}},
    }


class FakeJaeger(BaseHTTPRequestHandler):
    """Jaeger's query API, as far as the api uses it; records what it was asked."""

    asked: ClassVar[list[tuple[str, dict[str, list[str]]]]] = []
    fail: ClassVar[bool] = False
    start_us = int(T0.timestamp() * 1e6)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        FakeJaeger.asked.append((url.path, query))
        if FakeJaeger.fail:
            self._send(500, {"errors": ["down"]})
        elif url.path == "/api/traces":
            tags = json.loads(query["tags"][0])
            found = (
                [jaeger_trace("f" * 32, self.start_us)] if tags == {"podium.task_id": "t1"} else []
            )
            self._send(200, {"data": found})
        elif url.path == f"/api/traces/{'f' * 32}":
            self._send(200, {"data": [jaeger_trace("f" * 32, self.start_us)]})
        else:
            self._send(404, {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]})

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


def test_jaeger_spans_become_the_apis_spans() -> None:
    spans = jaeger_spans(jaeger_trace("f" * 32, 1_000_000))
    by_id = {s["span_id"]: s for s in spans}
    assert by_id["s2"]["parent_id"] == "s1" and by_id["s1"]["parent_id"] is None
    assert (by_id["s2"]["service"], by_id["s2"]["status"]) == ("executor", "ERROR")
    assert by_id["s2"]["duration_ms"] == 1.5
    assert by_id["s2"]["attributes"] == {"podium.step_id": "one"}


async def test_the_trace_from_a_jaeger_compatible_query_api(engine: Engine) -> None:
    project(engine)
    h = token(engine, "viewer", "acme")
    FakeJaeger.asked.clear()
    FakeJaeger.fail = False
    with serving(FakeJaeger) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        async with app_client(engine, JaegerTraces(url, timeout_s=5)) as client:
            r = await client.get("/v1/runs/t1/trace", headers=h)
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["source"], body["trace_ids"]) == ("otlp", ["f" * 32])
            assert [(s["span_id"], s["service"]) for s in body["spans"]] == [
                ("s1", "router"),
                ("s2", "executor"),
            ]
            (search_path, query), (read_path, _) = FakeJaeger.asked
            assert search_path == "/api/traces" and read_path == f"/api/traces/{'f' * 32}"
            assert query["service"] == ["router"]
            # the search starts a minute before the run was created
            assert int(query["start"][0]) == int(T0.timestamp() * 1e6) - 60_000_000
            FakeJaeger.fail = True
            down = await client.get("/v1/runs/t1/trace", headers=h)
            assert down.status_code == 502 and "500" in down.json()["detail"]
    FakeJaeger.fail = False


async def test_no_trace_store_is_503_but_only_for_a_run_the_token_sees(engine: Engine) -> None:
    project(engine)
    async with app_client(engine, None) as client:
        h = token(engine, "viewer", "acme")
        assert (await client.get("/v1/runs/t1/trace", headers=h)).status_code == 503
        other = token(engine, "viewer", "other")
        assert (await client.get("/v1/runs/t1/trace", headers=other)).status_code == 404


def test_the_trace_url_setting_picks_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODIUM_API_TRACE_URL", "http://jaeger:16686")
    s = ApiSettings()
    assert s.trace_url == "http://jaeger:16686"
    chosen = trace_source(tmp_path, s.trace_url)
    assert isinstance(chosen, JaegerTraces) and chosen.url == "http://jaeger:16686"
    monkeypatch.delenv("PODIUM_API_TRACE_URL")
    assert trace_source(tmp_path, ApiSettings().trace_url) == LocalTraces(tmp_path)


def test_a_history_entry_wakes_no_live_stream(engine: Engine) -> None:
    """It changes no run: the streams (which send runs) have nothing to look at."""
    woken: list[str] = []
    handler = make_handler(lambda: woken.append("x"))
    submitted = TaskSubmitted(task_id="t1", workflow="chain", tenant="acme")
    with engine.begin() as conn:
        for i, payload in enumerate((submitted, STORY[0])):
            envelope = Envelope(id=f"e{i}", type=payload.CE_TYPE, source="test", time=T0)
            handler.apply(Event(envelope, payload), None, UnitOfWork(conn, source="test"))
    assert woken == ["x"]
    assert [r[3] for r in rows(engine)] == ["accepted"]
