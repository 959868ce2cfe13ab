"""A submission that cannot be accepted is answered: the consume loop's ``refused``
hook, the router's reading of a refused record, TaskRejected, and template results
that are not JSON failing the task instead of its messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from podium_contracts import (
    StepRequested,
    TaskCancelRequested,
    TaskFailed,
    TaskRejected,
    TaskSubmitted,
    decode,
    encode,
)
from podium_router.rejections import Submission, refused_submission
from podium_router.templates import TemplateError, render_json
from podium_shared import ConsumeLoop, Handler, Refusal, UnitOfWork, make_engine
from podium_shared.db import outbox
from podium_shared.dlq import dlq_headers
from tests.unit.test_consume_loop import RecordingConsumer, Relay, record
from tests.unit.test_router_runs import Harness

pytestmark = pytest.mark.unit

SUBMITTED = [("ce_specversion", b"1.0"), ("ce_id", b"e1"), ("ce_source", b"x")]


def _headers(ce_type: str = "podium.task.submitted.v1") -> list[tuple[str, bytes]]:
    return [*SUBMITTED, ("ce_type", ce_type.encode())]


# --- the consume loop tells the handler what it dead-lettered -------------------------------


def _loop(tmp_path: Path, apply: Any, refused: Any) -> tuple[ConsumeLoop, sa.Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    loop = ConsumeLoop(
        consumer=RecordingConsumer(),  # type: ignore[arg-type]
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(apply=apply, refused=refused),
        group="g",
        service="svc",
    )
    return loop, engine


def _outbox(engine: sa.Engine) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(sa.select(outbox).order_by(outbox.c.id)))


async def test_the_refused_hook_hears_poison_and_failures_beside_their_dlq_records(
    tmp_path: Path,
) -> None:
    heard: list[Refusal] = []

    def refused(refusal: Refusal, uow: UnitOfWork) -> None:
        heard.append(refusal)
        uow.publish("t.notices", TaskCancelRequested(task_id="n", reason=refusal.reason), key="n")

    def boom(_e: Any, _r: None, _uow: UnitOfWork) -> None:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    loop, engine = _loop(tmp_path, boom, refused)
    await loop.process([record(0, b"not json", _headers()), record(1, *_valid("t2"))])
    assert [(r.reason, r.event is None, r.record.offset) for r in heard] == [
        ("undecodable", True, 0),
        ("processing_error", False, 1),
    ]
    assert heard[1].error_type == "OverflowError" and "SQLite INTEGER" in heard[1].message
    # each notice is written in the same transaction as its DLQ record
    assert [r.topic for r in _outbox(engine)] == ["t.tasks.v1.dlq", "t.notices"] * 2


async def test_a_failing_refused_hook_never_stops_the_dead_lettering(tmp_path: Path) -> None:
    def refused(_refusal: Refusal, uow: UnitOfWork) -> None:
        uow.publish("t.notices", TaskCancelRequested(task_id="n"), key="n")
        raise RuntimeError("the notice broke")

    loop, engine = _loop(tmp_path, lambda *_: None, refused)
    await loop.process([record(0, b"not json", _headers())])
    [row] = _outbox(engine)
    assert row.topic == "t.tasks.v1.dlq"
    assert dlq_headers([(k, v.encode("latin-1")) for k, v in row.headers])["reason"] == (
        "undecodable"
    )


def _valid(task_id: str) -> tuple[bytes, list[tuple[str, bytes]]]:
    return encode(TaskSubmitted(task_id=task_id, workflow="hello"), source="test", id="e2")


# --- which task a refused record was submitting ----------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "headers", "expected"),
    [
        # valid JSON, invalid contract: the payload's task id and workflow
        (
            b"k",
            b'{"task_id": "t-1", "workflow": "hello", "priority": 9223372036854775808}',
            _headers(),
            Submission("t-1", "hello", "e1"),
        ),
        # not JSON at all: the key, which upstream systems set to the task id
        (b"t-2", b"\xff\xfe", _headers(), Submission("t-2", None, "e1")),
        # a later version nobody reads yet is a submission too
        (b"t-3", b"{}", _headers("podium.task.submitted.v2"), Submission("t-3", None, "e1")),
        # structured mode: attributes and data in the body
        (
            None,
            b'{"specversion": "1.0", "id": "s1", "type": "podium.task.submitted.v1", '
            b'"source": "x", "data": {"task_id": "t-4", "workflow": "w", "input": 5}}',
            [("content-type", b"application/cloudevents+json")],
            Submission("t-4", "w", "s1"),
        ),
        # no CloudEvents headers, but shaped like a submission
        (None, b'{"task_id": "t-5", "workflow": "w"}', [], Submission("t-5", "w", None)),
        # a task id that breaks the contract is not one to answer to: the key instead
        (
            b"t-6",
            b'{"task_id": "' + b"x" * 201 + b'", "workflow": "w"}',
            _headers(),
            Submission("t-6", "w", "e1"),
        ),
    ],
)
def test_a_refused_submission_names_its_task(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], expected: Submission
) -> None:
    assert refused_submission(key, value, headers) == expected


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (b"t-1", b'{"task_id": "t-1"}', _headers("podium.task.cancel-requested.v1")),
        (None, b'{"text": "hi"}', []),  # no CloudEvent, no submission shape
        (None, b"not json", _headers()),  # nothing names a task
        (b"\xff\xfe", b"not json", _headers()),  # a key that is not text
        (b"", b'{"task_id": 7, "workflow": "w"}', _headers()),
    ],
)
def test_records_that_name_no_submission_are_only_dead_lettered(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    assert refused_submission(key, value, headers) is None


# --- the router answers with TaskRejected -----------------------------------------------------

HELLO = {"name": "hello", "steps": [{"id": "echo", "uses": "echo"}]}


def _refusal(
    value: bytes, headers: list[tuple[str, bytes]], reason: str, event: Any = None
) -> Refusal:
    return Refusal(record(3, value, headers), event, reason, "InvalidMessage", "why")


def test_the_router_rejects_a_refused_submission_on_the_task_events_topic(
    tmp_path: Path,
) -> None:
    h = Harness(f"sqlite:///{tmp_path / 'r.db'}", HELLO)
    body = json.dumps({"task_id": "big", "workflow": "hello", "priority": 2**63}).encode()
    [(topic, rejected)] = h.run(h.router.reject, _refusal(body, _headers(), "invalid"))
    assert topic == "t.task-events.v1" and isinstance(rejected, TaskRejected)
    assert (rejected.task_id, rejected.workflow) == ("big", "hello")
    assert (rejected.error.type, rejected.error.message) == ("invalid", "why")
    assert rejected.dlq is not None
    assert (rejected.dlq.topic, rejected.dlq.record_id) == ("t.tasks.v1.dlq", "e1")

    # a decoded submission the router failed on is answered the same way
    value, headers = _valid("boom")
    event = decode(value, headers)
    [(_, again)] = h.run(h.router.reject, _refusal(value, headers, "processing_error", event))
    assert isinstance(again, TaskRejected) and again.task_id == "boom"
    assert again.dlq is not None and again.dlq.record_id == "e2"


def test_the_router_answers_nothing_for_other_records_or_an_existing_task(
    tmp_path: Path,
) -> None:
    h = Harness(f"sqlite:///{tmp_path / 'r.db'}", HELLO)
    value, headers = encode(TaskCancelRequested(task_id="c"), source="x")
    cancel = decode(value, headers)
    assert h.run(h.router.reject, _refusal(value, headers, "processing_error", cancel)) == []
    assert h.run(h.router.reject, _refusal(b"junk", [], "undecodable")) == []
    h.run(h.router.accept_task, TaskSubmitted(task_id="dup", workflow="hello"))
    body = json.dumps({"task_id": "dup", "workflow": "hello", "priority": 2**63}).encode()
    assert h.run(h.router.reject, _refusal(body, _headers(), "invalid")) == []


# --- template results must be JSON the codec can write ----------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ input.a * input.a }}", "result is not JSON: Integer exceeds 64-bit range"),
        ("x = {{ input.a * input.a }}", "result is not JSON: Integer exceeds 64-bit range"),
        ({"deep": "{{ input.deep }}"}, "result nested deeper than 63 levels"),
    ],
)
def test_a_template_result_that_is_not_json_is_a_template_error(
    template: Any, message: str
) -> None:
    deep: list[Any] = []
    for _ in range(130):
        deep = [deep]
    with pytest.raises(TemplateError, match=message):
        render_json(template, {"input": {"a": 2**40, "deep": deep}})


def test_a_task_whose_step_input_is_not_json_fails_with_a_template_error(tmp_path: Path) -> None:
    workflow = {
        "name": "big",
        "steps": [{"id": "a", "uses": "echo", "with": {"x": "{{ input.a * input.a }}"}}],
    }
    h = Harness(f"sqlite:///{tmp_path / 'r.db'}", workflow)
    sent = h.run(
        h.router.accept_task, TaskSubmitted(task_id="t", workflow="big", input={"a": 2**40})
    )
    failed = [p for _, p in sent if isinstance(p, TaskFailed)]
    assert not [p for _, p in sent if isinstance(p, StepRequested)]
    assert [(f.error.type, f.error.step_id) for f in failed] == [("template_error", "a")]
    assert "Integer exceeds 64-bit range" in failed[0].error.message
