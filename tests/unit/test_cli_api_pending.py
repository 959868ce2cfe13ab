"""`podium history`, `trace`, `dlq show` and `dlq replay` through the api, as they will
run once its endpoints for them merge (LOCAL_UNTIL_MERGE emptied here): against a
loopback server answering in the shapes the parts of issue 17 agreed on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from typer.testing import CliRunner

from podium import cli as cli_module
from podium import cli_dlq, cli_trace
from tests.support.http_server import serving

pytestmark = pytest.mark.unit

RUN = {
    "task_id": "t1", "tenant": "default", "workflow": "hello", "workflow_version": 1,
    "status": "failed", "accepted_at": "2026-12-02T01:00:00Z", "finished_at": None,
    "usage": None, "input": {}, "output": None, "error": {"type": "timeout"}, "steps": [],
}  # fmt: skip
HISTORY = {
    "task_id": "t1",
    "entries": [
        {"seq": 1, "at": "2026-12-02T01:00:00Z", "kind": "accepted", "step": None,
         "cause": "submitted", "next_action": None, "detail": {}},
        {"seq": 2, "at": "2026-12-02T01:00:01Z", "kind": "task_failed", "step": "echo",
         "cause": "step echo abandoned", "next_action": "replay podium.steps.default.v1.dlq",
         "detail": {"attempt": 3, "pool": "default", "capability": "echo"}},
    ],
}  # fmt: skip
TRACE = {
    "task_id": "t1", "trace_ids": ["tr"], "source": "otlp",
    "spans": [
        {"trace_id": "tr", "span_id": "a", "parent_id": None, "name": "route",
         "service": "router", "start": "2026-12-02T01:00:00Z",
         "end": "2026-12-02T01:00:00.004Z", "duration_ms": 4.0, "status": "OK",
         "attributes": {"podium.task_id": "t1"}},
    ],
}  # fmt: skip
TOPIC = "p.steps.default.v1.dlq"
RECORDS = {
    "topic": TOPIC,
    "records": [
        {"id": "ce-1", "locator": "0:7", "partition": 0, "offset": 7,
         "time": "2026-12-02T01:00:01Z", "task_id": "t1", "error_type": "timeout",
         "reason": "step_abandoned",
         "headers": {"podium-dlq-error-class": "retryable", "podium-dlq-step-id": "echo",
                     "podium-dlq-original-topic": "p.steps.default.v1"},
         "value": {"task_id": "t1"}, "value_text": None},
    ],
}  # fmt: skip
REPORT = {
    "topic": TOPIC, "selected": 1, "dry_run": True,
    "replayed": [{"id": "ce-1", "offset": 7, "task_id": "t1", "to": "p.steps.default.v1"}],
    "skipped": [],
}  # fmt: skip


class Api(BaseHTTPRequestHandler):
    asked: ClassVar[list[tuple[str, str, dict[str, Any], Any]]] = []

    def _answer(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        n = int(self.headers.get("content-length") or 0)
        sent = json.loads(self.rfile.read(n)) if n else None
        Api.asked.append((method, url.path, parse_qs(url.query), sent))
        answers = {
            "/v1/runs/t1": RUN,
            "/v1/runs/t1/history": HISTORY,
            "/v1/runs/t1/trace": TRACE,
            f"/v1/dead-letters/{TOPIC}/records": RECORDS,
            f"/v1/dead-letters/{TOPIC}/replay": REPORT,
        }
        self._answer(answers[url.path])

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Any]]:
    for module in (cli_module, cli_dlq, cli_trace):
        monkeypatch.setattr(module, "LOCAL_UNTIL_MERGE", frozenset())
    Api.asked = []
    with serving(Api) as server:
        monkeypatch.setenv("PODIUM_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("PODIUM_API_TOKEN", "pdm_test")
        monkeypatch.setenv("PODIUM_HOME", str(tmp_path))
        yield Api.asked


def podium(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_module.app, list(args))
    assert result.stderr == "", result.stderr
    return result.exit_code, result.stdout


def test_history_reads_the_entries_as_the_router_wrote_them(api: list[Any]) -> None:
    code, out = podium("history", "t1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "t1 failed workflow hello v1"
    assert "task_failed" in lines[2] and "step echo attempt 3 echo@default" in lines[2]
    assert lines[-1] == "next: replay podium.steps.default.v1.dlq"
    assert [a[1] for a in api] == ["/v1/runs/t1", "/v1/runs/t1/history"]


def test_trace_draws_the_spans_the_api_found(api: list[Any]) -> None:
    code, out = podium("trace", "t1", "--json")
    assert code == 0
    (trace,) = orjson.loads(out)["traces"]
    assert trace["trace_id"] == "tr" and trace["spans"][0]["name"] == "route"
    assert trace["duration_ms"] == pytest.approx(4.0)


def test_dlq_show_and_replay_send_the_filters_and_print_as_before(api: list[Any]) -> None:
    code, out = podium("dlq", "show", TOPIC, "--task", "t1", "--error-type", "timeout", "--json")
    assert code == 0
    (record,) = orjson.loads(out)
    assert (record["id"], record["error_class"], record["step_id"]) == ("ce-1", "retryable", "echo")
    _, path, query, _ = api[-1]
    assert path == f"/v1/dead-letters/{TOPIC}/records"
    assert query == {"task_id": ["t1"], "error_type": ["timeout"], "limit": ["20"]}

    code, out = podium("dlq", "replay", TOPIC, "--id", "ce-1", "--dry-run")
    assert (code, out) == (0, f"would replay 1 of 1 from {TOPIC} to their original topics\n")
    _, path, _, body = api[-1]
    assert path == f"/v1/dead-letters/{TOPIC}/replay"
    assert body == {
        "ids": ["ce-1"],
        "error_type": None,
        "task_id": None,
        "since": None,
        "limit": None,
        "dry_run": True,
        "to": None,
    }
