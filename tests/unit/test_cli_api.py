"""The CLI's api client: where it calls, the one line for each refusal, and the api's
answers in the shapes `podium status`, `history`, `trace` and `dlq` print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from podium import api_views as views
from podium.api_client import (
    EXIT_USAGE,
    ApiClient,
    NotFound,
    Refused,
    Target,
    Unreachable,
    api_url_file,
    operator_token_file,
    resolve_target,
)
from podium.trace import shape

pytestmark = pytest.mark.unit

TARGET = Target("http://api.example:8780", "tok-123", "PODIUM_API_URL")


def local_stack_files(home: Path, url: str = "http://127.0.0.1:8780", token: str = "local") -> None:
    api_url_file(home).write_text(url + "\n")
    operator_token_file(home).parent.mkdir(parents=True, exist_ok=True)
    operator_token_file(home).write_text(token + "\n")


def test_the_environment_names_the_api_and_its_token(tmp_path: Path) -> None:
    env = {"PODIUM_API_URL": "https://podium.example/ ", "PODIUM_API_TOKEN": "t"}
    assert resolve_target(env, tmp_path) == Target("https://podium.example", "t", "PODIUM_API_URL")


def test_unset_it_is_the_local_stack_podium_up_wrote(tmp_path: Path) -> None:
    local_stack_files(tmp_path)
    found = resolve_target({}, tmp_path)
    assert (found.url, found.token) == ("http://127.0.0.1:8780", "local")
    assert found.source == str(tmp_path / "api.url")


def test_the_local_token_is_never_sent_to_another_api(tmp_path: Path) -> None:
    local_stack_files(tmp_path)
    found = resolve_target({"PODIUM_API_URL": "https://elsewhere.example"}, tmp_path)
    assert found.token is None


def test_with_neither_the_error_says_how_to_set_the_url(tmp_path: Path) -> None:
    with pytest.raises(Unreachable) as caught:
        resolve_target({}, tmp_path)
    assert "PODIUM_API_URL" in str(caught.value) and caught.value.code == EXIT_USAGE


def test_a_target_never_shows_its_token() -> None:
    assert "tok-123" not in repr(TARGET)


def client(handler: Any, target: Target = TARGET) -> ApiClient:
    return ApiClient(target, transport=httpx.MockTransport(handler))


def test_the_list_follows_cursors_up_to_the_limit_with_the_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        cursor = request.url.params.get("cursor")
        start = int(cursor) if cursor else 0
        n = int(request.url.params["limit"])
        items = [{"task_id": f"t{i}", "status": "accepted"} for i in range(start, start + n)]
        return httpx.Response(200, json={"items": items, "next_cursor": str(start + n)})

    with client(handler) as api:
        runs = api.list_runs(status="accepted", limit=450)
    assert [r["task_id"] for r in runs] == [f"t{i}" for i in range(450)]
    assert [r.url.params["limit"] for r in seen] == ["200", "200", "50"]
    assert all(r.headers["Authorization"] == "Bearer tok-123" for r in seen)
    assert all(r.url.params["status"] == "accepted" and "tenant" not in r.url.params for r in seen)


def test_a_task_id_is_one_path_segment() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path == b"/v1/runs/a%2Fb%3Fc/cancel"
        assert json.loads(request.content) == {"reason": "why"}
        return httpx.Response(202, json={"task_id": "a/b?c", "status": "cancel_requested"})

    with client(handler) as api:
        assert api.cancel("a/b?c", "why")["task_id"] == "a/b?c"


@pytest.mark.parametrize(
    ("status", "token", "kind", "words"),
    [
        (401, None, Refused, "needs a token: set PODIUM_API_TOKEN"),
        (401, "tok", Refused, "refused the token (unknown or revoked token)"),
        (403, "tok", Refused, "lacks the role or tenant for this: this needs the operator role"),
        (404, "tok", NotFound, "no such task 'x'"),
    ],
)
def test_each_refusal_is_one_line(
    status: int, token: str | None, kind: type[Exception], words: str
) -> None:
    detail = {401: "unknown or revoked token", 403: "this needs the operator role"}
    body = {"detail": detail.get(status, "no such run")}

    def handler(request: httpx.Request) -> httpx.Response:
        assert ("Authorization" in request.headers) == (token is not None)
        return httpx.Response(status, json=body)

    with (
        client(handler, Target(TARGET.url, token, "PODIUM_API_URL")) as api,
        pytest.raises(kind) as caught,
    ):
        api.cancel("x")
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_nothing_listening_names_the_url_and_the_setting() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with client(handler) as api, pytest.raises(Unreachable) as caught:
        api.get_run("x")
    message = str(caught.value)
    assert TARGET.url in message and "PODIUM_API_URL" in message
    assert caught.value.code == EXIT_USAGE


def test_a_server_error_says_which_api_failed() -> None:
    with (
        client(lambda r: httpx.Response(500, text="Internal Server Error")) as api,
        pytest.raises(Exception, match=r"api.example:8780 failed \(500\)"),
    ):
        api.dead_letters()


RUN = {
    "task_id": "t1",
    "tenant": "acme",
    "workflow": "hello",
    "workflow_version": 1,
    "status": "accepted",
    "accepted_at": "2026-12-02T01:00:00Z",
    "finished_at": None,
    "usage": {"cost_usd": 0.5, "prompt_tokens": 10, "completion_tokens": 5},
    "input": {"text": "hi"},
    "output": None,
    "error": None,
    "steps": [
        {"step_id": "echo", "status": "retrying", "capability": "echo", "pool": "default",
         "attempts": 2, "duration_ms": 1.5},
    ],
}  # fmt: skip


def test_a_run_reads_as_the_router_table_did() -> None:
    info = views.run_detail(RUN)
    assert info["status"] == "running" and info["accepted_at"] == "2026-12-02T01:00:00+00:00"
    assert info["usage"] == {"cost_usd": 0.5, "tokens": 15}
    assert views.status_line(info) == (
        "t1 running workflow hello v1: echo retrying (echo@default, attempts 2)"
    )
    assert views.api_status("running") == "accepted" and views.api_status("failed") == "failed"
    assert views.usage({"cost_usd": 1, "tokens_in": 3, "tokens_out": 4})["tokens"] == 7
    assert views.list_lines([]) == "no tasks"


def test_history_entries_read_as_the_router_history_did() -> None:
    entries = {
        "task_id": "t1",
        "entries": [
            {"seq": 1, "at": "2026-12-02T01:00:00Z", "kind": "accepted", "step": None,
             "cause": "submitted", "next_action": "dispatch echo", "detail": {}},
            {"seq": 2, "at": "2026-12-02T01:00:01Z", "kind": "step_failed", "step": "echo",
             "cause": "timeout", "next_action": "retry in 2s",
             "detail": {"attempt": 1, "pool": "default", "capability": "echo"}},
        ],
    }  # fmt: skip
    info = views.history_view(RUN, entries)
    assert [(e["event"], e["step_id"], e["attempt"]) for e in info["history"]] == [
        ("accepted", None, None),
        ("step_failed", "echo", 1),
    ]
    assert info["next"] == "retry in 2s"
    over = views.history_view(RUN | {"status": "completed"}, {"entries": []})
    assert over["next"] == "nothing: it is over"


def test_the_api_trace_draws_as_the_local_one() -> None:
    found = {
        "task_id": "t1",
        "trace_ids": ["tr"],
        "source": "local",
        "spans": [
            {"trace_id": "tr", "span_id": "b", "parent_id": "a", "name": "execute",
             "service": "executor", "start": "2026-12-02T01:00:00.010Z",
             "end": "2026-12-02T01:00:00.030Z", "duration_ms": 20.0, "status": "OK",
             "attributes": {"podium.task_id": "t1"}},
            {"trace_id": "tr", "span_id": "a", "parent_id": None, "name": "route",
             "service": "router", "start": "2026-12-02T01:00:00Z",
             "end": "2026-12-02T01:00:00.040Z", "duration_ms": 40.0, "status": "OK",
             "attributes": {}},
        ],
    }  # fmt: skip
    ids, spans = views.trace_spans(found)
    (trace,) = shape("t1", ids, spans)["traces"]
    assert trace["services"] == ["executor", "router"]
    assert [(s["name"], s["depth"]) for s in trace["spans"]] == [("route", 0), ("execute", 1)]
    assert trace["duration_ms"] == pytest.approx(40.0)
    assert trace["spans"][1]["offset_ms"] == pytest.approx(10.0)


def test_dead_letters_read_as_the_cli_printed_them() -> None:
    record = {
        "id": "ce-1", "locator": "0:7", "partition": 0, "offset": 7,
        "time": "2026-12-02T01:00:00Z", "task_id": "t1", "error_type": "timeout",
        "reason": "step_abandoned",
        "headers": {"podium-dlq-error-class": "retryable",
                    "podium-dlq-original-topic": "p.steps.default.v1",
                    "podium-dlq-step-id": "echo", "podium-dlq-attempts": "3"},
        "value": None, "value_text": "not json",
    }  # fmt: skip
    shown = views.dlq_record("p.steps.default.v1.dlq", record)
    assert (shown["error_class"], shown["original_topic"], shown["step_id"]) == (
        "retryable",
        "p.steps.default.v1",
        "echo",
    )
    assert shown["payload"] is None and shown["value"] == "not json"
    report = views.replay_view(
        {
            "topic": "p.x.dlq",
            "selected": 3,
            "dry_run": True,
            "replayed": [{"id": "a", "offset": 1, "task_id": "t", "to": "p.x"}],
            "skipped": [{"id": "b", "task_id": "u", "why": "task already completed"}] * 2,
        }
    )
    assert (report["replayed"], report["skipped"]) == (1, 2)
    assert report["skipped_by_reason"] == {"task already completed": 2}
    topics = [{"topic": "p.steps.default.v1.dlq"}]
    assert views.find_topic(topics, "steps.default.v1.dlq", "p") == topics[0]
    assert views.find_topic(topics, "p.steps.default.v1.dlq", "p") == topics[0]
    assert views.find_topic(topics, "nope", "p") is None


def test_a_stopped_stack_leaves_no_api_url_for_the_cli(tmp_path: Path) -> None:
    from podium.stack import Stack
    from podium_shared import Settings

    stack = Stack(Settings(home=tmp_path), api=True, api_port=8780)
    api_url_file(tmp_path).write_text(stack.api_url + "\n")
    stack.stop()
    assert not api_url_file(tmp_path).exists()
    with pytest.raises(Unreachable):
        resolve_target({}, tmp_path)
