"""A stub of the operators' API, exactly the shapes the parts of issue 17 agreed on,
beside the real console files: the console's pages for endpoints that other parts
build are tested against it (tests/integration/test_console_pages.py), and the real
stack tests what exists (test_console.py).

``StubApi(optional=False)`` answers FastAPI's own 404 for every endpoint that is not
on the integrate branch yet, as a server without them would."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import StreamingResponse

from podium_api.console_static import mount_console

TOKEN = "pdm_stub-token"
T0 = "2026-12-02T01:00:00Z"
HOSTILE = '<img src=x onerror="window.__pwned=1">'


def _run(task_id: str, status: str) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "tenant": "acme",
        "workflow": "research",
        "workflow_version": 2,
        "subject": "u1",
        "status": status,
        "created_at": T0,
        "accepted_at": T0,
        "finished_at": "2026-12-02T01:00:03.5Z" if status == "completed" else None,
        "updated_at": T0,
        "cancel_requested_at": None,
        "error": None,
        "usage": {"tokens_in": 1200, "tokens_out": 340, "cost_usd": 0.0123},
        "dlq": None,
    }


def _step(step_id: str, status: str, depends_on: list[str]) -> dict[str, Any]:
    return {
        "step_id": step_id,
        "status": status,
        "capability": "llm.chat",
        "pool": "default",
        "attempts": 2 if status == "retrying" else 1,
        "duration_ms": 812.5,
        "total_duration_ms": 900.0,
        "first_at": T0,
        "updated_at": T0,
        "output": {"text": "ok"},
        "error": None,
        "usage": None,
        "retry_due_at": None,
        "dlq": None,
        "depends_on": depends_on,
    }


STEPS = [
    _step("fetch", "completed", []),
    _step("search", "completed", []),
    _step("summarise", "completed", ["fetch", "search"]),
    _step("review", "retrying", ["summarise"]),
    _step("publish", "completed", ["review", "approve"]),  # approve: not reached yet
]


def _span(
    span_id: str, parent: str | None, name: str, service: str, start_s: float, end_s: float
) -> dict[str, Any]:
    return {
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": span_id,
        "parent_id": parent,
        "name": name,
        "service": service,
        "start": f"2026-12-02T01:00:{start_s:06.3f}Z",
        "end": f"2026-12-02T01:00:{end_s:06.3f}Z",
        "duration_ms": (end_s - start_s) * 1000,
        "status": "ERROR" if name == "step search" else "OK",
        "attributes": {"podium.task_id": "r-1"},
    }


SPANS = [
    _span("a1", None, "submit", "api", 0.0, 4.0),
    _span("b2", "a1", "route", "router", 0.0, 1.0),
    _span("c3", "b2", "step fetch", "executor", 1.0, 2.0),
    _span("d4", "b2", "step search", "executor", 1.0, 3.0),
]


def _record(i: int, error_type: str) -> dict[str, Any]:
    return {
        "id": f"ce-{i}",
        "locator": f"0:{i}",
        "partition": 0,
        "offset": i,
        "time": T0,
        "task_id": f"t-{i}",
        "error_type": error_type,
        "reason": "step_abandoned",
        "headers": {"ce_id": f"ce-{i}", "podium-dlq-reason": "step_abandoned"},
        "value": None if i == 2 else {"step": i},
        "value_text": "\\xff not json" if i == 2 else None,
    }


class StubApi:
    """The stub served by uvicorn on a thread; ``requests`` records the replay bodies,
    ``push`` sends a Server-Sent Event to every open stream."""

    def __init__(self, *, optional: bool = True) -> None:
        self.optional = optional
        self.replays: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.app = self._app()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> StubApi:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the stub API did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def push(self, event: str, data: str) -> None:
        self.events.append(f"id: {len(self.events) + 1}\nevent: {event}\ndata: {data}\n\n")

    def _app(self) -> FastAPI:
        app = FastAPI()
        stub = self

        def auth(authorization: str | None) -> None:
            if authorization != f"Bearer {TOKEN}":
                raise HTTPException(401, "unknown or revoked token")

        @app.get("/v1/runs")
        def runs(authorization: str | None = Header(None)) -> Any:
            auth(authorization)
            return {
                "items": [_run("r-2", "accepted"), _run("r-1", "completed")],
                "next_cursor": None,
            }

        @app.get("/v1/runs/{task_id}")
        def run(task_id: str, authorization: str | None = Header(None)) -> Any:
            auth(authorization)
            if task_id not in {"r-1", "r-2"}:
                raise HTTPException(404, "no such run")
            return _run(task_id, "completed") | {
                "input": {"question": HOSTILE},
                "output": {"answer": 42},
                "steps": STEPS,
            }

        @app.get("/v1/dead-letters")
        def dead_letters(authorization: str | None = Header(None)) -> Any:
            auth(authorization)
            group = {"reason": "step_abandoned", "error_class": "retryable", "count": 2}
            return {
                "topics": [
                    {
                        "topic": "p.steps.default.dlq",
                        "count": 3,
                        "oldest": T0,
                        "newest": T0,
                        "groups": [group | {"error_type": "Timeout"}],
                    }
                ]
            }

        @app.get("/v1/events")
        async def events(authorization: str | None = Header(None)) -> Any:
            auth(authorization)

            start = len(stub.events)  # before the headers: later events are in the stream

            async def stream() -> AsyncIterator[str]:
                yield "retry: 2000\n\n"
                sent = start
                while True:
                    while sent < len(stub.events):
                        yield stub.events[sent]
                        sent += 1
                    await asyncio.sleep(0.05)  # the stub's own poll of its list

            return StreamingResponse(stream(), media_type="text/event-stream")

        if self.optional:

            @app.get("/v1/runs/{task_id}/history")
            def history(task_id: str, authorization: str | None = Header(None)) -> Any:
                auth(authorization)
                entry: dict[str, Any] = {"at": T0, "step": None, "detail": {}}
                return {
                    "task_id": task_id,
                    "entries": [
                        entry
                        | {
                            "seq": 1,
                            "kind": "accepted",
                            "cause": "TaskSubmitted",
                            "next_action": "request fetch, search",
                        },
                        entry
                        | {
                            "seq": 2,
                            "kind": "step_completed",
                            "step": "fetch",
                            "cause": "StepCompleted",
                            "next_action": "wait",
                            "detail": {"a": 1},
                        },
                    ],
                }

            @app.get("/v1/runs/{task_id}/trace")
            def trace(task_id: str, authorization: str | None = Header(None)) -> Any:
                auth(authorization)
                trace_ids = ["4bf92f3577b34da6a3ce929d0e0e4736"]
                return {
                    "task_id": task_id,
                    "trace_ids": trace_ids,
                    "source": "local",
                    "spans": SPANS,
                }

            @app.get("/v1/dead-letters/{topic}/records")
            def records(topic: str, authorization: str | None = Header(None)) -> Any:
                auth(authorization)
                found = [_record(0, "Timeout"), _record(1, "Timeout"), _record(2, "BadInput")]
                return {"topic": topic, "records": found}

            @app.post("/v1/dead-letters/{topic}/replay")
            async def replay(
                topic: str, request: Request, authorization: str | None = Header(None)
            ) -> Any:
                auth(authorization)
                body = await request.json()
                stub.replays.append(body)
                sent = [
                    {
                        "id": i,
                        "offset": None if body["dry_run"] else 10 + n,
                        "task_id": f"t-{i[-1]}",
                        "to": "p.steps.default",
                    }
                    for n, i in enumerate(body["ids"])
                ]
                return {
                    "topic": topic,
                    "selected": len(body["ids"]),
                    "dry_run": body["dry_run"],
                    "replayed": sent,
                    "skipped": [],
                }

            @app.get("/v1/audit")
            def audit(authorization: str | None = Header(None)) -> Any:
                auth(authorization)
                return {
                    "entries": [
                        {
                            "at": T0,
                            "who": "token 7",
                            "action": "replay",
                            "target": "p.steps.default.dlq",
                            "detail": {"ids": ["ce-0"]},
                        }
                    ]
                }

            @app.get("/v1/pools")
            def pools(authorization: str | None = Header(None)) -> Any:
                auth(authorization)
                lag = [{"partition": 0, "lag": 3}, {"partition": 1, "lag": 4}]
                return {
                    "pools": [
                        {
                            "name": "default",
                            "topic": "p.steps.default",
                            "replicas": 2,
                            "lag": lag,
                            "breakers": {"llm.chat": {"state": "open"}},
                            "rate_limit": {"rps": 5},
                        }
                    ]
                }

            @app.get("/v1/workflows")
            def workflows(authorization: str | None = Header(None)) -> Any:
                auth(authorization)
                return {"workflows": [{"name": "research", "versions": [1, 2]}]}

        mount_console(app)
        return app
