"""`podium history`, `trace`, `dlq show` and `dlq replay` through the api (the only
way they read): against a loopback server answering in the api's shapes, and refused
by it in one line."""

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
from podium.cli_dlq import summary_text
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
    "replayed": [{"id": "ce-1", "offset": "0:7", "task_id": "t1", "to": "p.steps.default.v1"}],
    "skipped": [], "skipped_by_reason": {}, "seconds": 0.0,
}  # fmt: skip
# What the api answers instead, per path: a status and its detail.
REFUSALS: dict[str, tuple[int, str]] = {}


class Api(BaseHTTPRequestHandler):
    asked: ClassVar[list[tuple[str, str, dict[str, Any], Any]]] = []

    def _answer(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        n = int(self.headers.get("content-length") or 0)
        sent = json.loads(self.rfile.read(n)) if n else None
        Api.asked.append((method, url.path, parse_qs(url.query), sent))
        if url.path in REFUSALS:
            status, detail = REFUSALS[url.path]
            self._answer({"detail": detail}, status)
            return
        answers = {
            "/v1/runs/t1": RUN,
            "/v1/runs/t1/history": HISTORY,
            "/v1/runs/t1/trace": TRACE,
            f"/v1/dead-letters/{TOPIC}/records": RECORDS,
            f"/v1/dead-letters/{TOPIC}/replay": REPORT,
        }
        if url.path not in answers:
            self._answer({"detail": "Not Found"}, 404)
            return
        self._answer(answers[url.path])

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Any]]:
    Api.asked = []
    REFUSALS.clear()
    with serving(Api) as server:
        monkeypatch.setenv("PODIUM_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("PODIUM_API_TOKEN", "pdm_test")
        monkeypatch.setenv("PODIUM_HOME", str(tmp_path))
        yield Api.asked


def podium(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_module.app, list(args))
    assert result.stderr == "", result.stderr
    return result.exit_code, result.stdout


def refused(*args: str) -> tuple[int, str]:
    """Exit code and stderr of a command that must fail, printing nothing on stdout."""
    result = CliRunner().invoke(cli_module.app, list(args))
    assert result.stdout == "" and "Traceback" not in result.stderr, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    return result.exit_code, result.stderr


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


def test_a_replay_that_sent_says_how_fast_as_it_did_when_the_cli_sent() -> None:
    data = {
        "topic": TOPIC,
        "selected": 3,
        "dry_run": False,
        "replayed": 2,
        "skipped": 1,
        "skipped_by_reason": {"task already completed": 1},
        "seconds": 0.5,
        "records_per_s": 4.0,
        "replayed_records": REPORT["replayed"] * 2,
        "skipped_records": [{"id": "ce-2", "task_id": "t2", "why": "task already completed"}],
    }
    assert summary_text(data, "p.steps.backup.v1") == (
        f"replayed 2 of 3 from {TOPIC} to p.steps.backup.v1 in 0.50s (4 records/s);"
        " skipped 1: 1 task already completed\n"
        "  skipped ce-2 (task t2): task already completed"
    )
    assert summary_text(data | {"dry_run": True}, None) == (
        f"would replay 2 of 3 from {TOPIC} to their original topics;"
        " skipped 1: 1 task already completed\n"
        "  skipped ce-2 (task t2): task already completed"
    )


def test_the_replay_json_is_the_cli_report_with_the_api_time(api: list[Any]) -> None:
    code, out = podium("dlq", "replay", TOPIC, "--task", "t1", "--to", "p.steps.default.v1",
                       "--json")  # fmt: skip
    assert code == 0
    report = orjson.loads(out)
    assert (report["replayed"], report["skipped"], report["records_per_s"]) == (1, 0, 0.0)
    assert report["replayed_records"][0]["id"] == "ce-1"
    _, _, _, body = api[-1]
    # Without --dry-run the CLI sends: the api's default (a dry run) is not the CLI's.
    assert (body["dry_run"], body["task_id"], body["to"]) == (False, "t1", "p.steps.default.v1")


@pytest.mark.parametrize(
    ("status", "detail", "line", "exit_code"),
    [
        (403, "this needs the operator role", "the token lacks the role or tenant for this", 2),
        (401, "unknown or revoked token", "refused the token (unknown or revoked token)", 2),
        (400, "not the source of a DLQ topic", "not the source of a DLQ topic", 2),
        (502, "replay failed: broker down", "failed (502): replay failed: broker down", 1),
    ],
    ids=["viewer", "bad-token", "bad-target", "broker"],
)
def test_a_refused_replay_is_one_line_and_non_zero(
    api: list[Any], status: int, detail: str, line: str, exit_code: int
) -> None:
    REFUSALS[f"/v1/dead-letters/{TOPIC}/replay"] = (status, detail)
    code, err = refused("dlq", "replay", TOPIC, "--task", "t1")
    assert code == exit_code and err.startswith("podium: error: ") and line in err, err


def test_an_unknown_topic_is_a_usage_error_as_before(api: list[Any]) -> None:
    for command in ("show", "replay"):
        code, err = refused("dlq", command, "no-such.dlq")
        assert (code, err) == (2, "podium: error: no topic 'no-such.dlq'\n")


def test_a_bad_since_asks_the_api_nothing(api: list[Any]) -> None:
    for command in ("show", "replay"):
        code, err = refused("dlq", command, TOPIC, "--since", "yesterday")
        assert code == 2 and "neither a time" in err, err
    assert api == []


def test_history_and_trace_of_an_unknown_task_say_so(api: list[Any]) -> None:
    for command in ("history", "trace"):
        code, err = refused(command, "nope")
        assert (code, err) == (1, "podium: error: no such task 'nope'\n")


@pytest.mark.parametrize("command", [["history", "t1"], ["trace", "t1"], ["dlq", "show", TOPIC],
                                     ["dlq", "replay", TOPIC, "--dry-run"]])  # fmt: skip
def test_no_api_to_call_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str]
) -> None:
    monkeypatch.delenv("PODIUM_API_URL", raising=False)
    monkeypatch.delenv("PODIUM_API_TOKEN", raising=False)
    monkeypatch.setenv("PODIUM_HOME", str(tmp_path))
    code, err = refused(*command)
    assert code == 2 and err.startswith("podium: error: no podium api to call: set PODIUM_API_URL")
    monkeypatch.setenv("PODIUM_API_URL", "http://127.0.0.1:9")  # nothing listens on discard
    code, err = refused(*command)
    assert code == 2 and "cannot reach the podium api at http://127.0.0.1:9" in err, err


def test_the_cli_imports_no_service_tables() -> None:
    """The CLI reads runs, history, traces and dead letters through the api, never from a
    service's database: no module of it imports a service's tables or repositories."""
    import ast

    services = ("podium_router", "podium_executor", "podium_memory", "podium_recovery")
    owned = (*services, "podium_api")
    found = []
    for path in sorted(Path(cli_module.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [
                f"{path.name}: {n}"
                for n in names
                if n.startswith(owned)
                and n.split(".")[-1] in {"state", "repository", "projection", "queries"}
            ]
    assert found == []
