"""Over the real broker and processes: every submission is answered, and every
dispatched step is watched (issue 12, items 8, 9 and 13).

A submission the router cannot accept used to die as a ``processing_error`` in the
dead-letter topic while its submitter waited for ever; a step whose request or result
was lost stayed ``running`` for good."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import (
    TaskCompleted,
    TaskFailed,
    TaskRejected,
    TaskSubmitted,
)
from podium_shared import Topics, dlq_headers
from tests.conftest import stack_settings
from tests.support.kafka import read_topic
from tests.support.router_db import task_history

pytestmark = pytest.mark.integration


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def as_sent(body: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A submission as another language's client writes it: the standard library's JSON
    (which, unlike orjson, writes any depth) and the four CloudEvents headers."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", uuid.uuid4().hex.encode()),
        ("ce_type", b"podium.task.submitted.v1"),
        ("ce_source", b"billing-service"),
        ("content-type", b"application/json"),
    ]
    return json.dumps(body).encode(), headers


async def test_every_hostile_submission_gets_an_answer(stack: Stack) -> None:
    hostile = {
        "priority": {"priority": 2**63},
        "tokens": {"budget": {"max_tokens": 2**63}},
        "deep": {"input": nested(300)},  # 254 to 500 levels used to pass decoding
    }
    ids = {name: tid(name) for name in [*hostile, "undecodable", "late", "product"]}
    async with PodiumClient(stack.settings) as client:
        for name, fields in hostile.items():
            value, headers = as_sent({"task_id": ids[name], "workflow": "hello", **fields})
            await client.submit_raw(value, headers, key=ids[name].encode())
        # not JSON at all: only the key says which task it was
        await client.submit_raw(b"\xff{not json", as_sent({})[1], key=ids["undecodable"].encode())
        # the end of time as a deadline: accepted, and it runs
        value, headers = as_sent(
            {
                "task_id": ids["late"],
                "workflow": "hello",
                "input": {"text": "hi"},
                "deadline": "9999-12-31T23:59:59.999999Z",
            }
        )
        await client.submit_raw(value, headers, key=ids["late"].encode())
        # a template result beyond 64 bits
        await client.submit(
            TaskSubmitted(
                task_id=ids["product"], workflow="test-product", input={"a": 2**40, "b": 2**40}
            )
        )
        outcomes = await client.wait_for(ids.values(), 45)

    for name, field in [("priority", "priority"), ("tokens", "budget.max_tokens")]:
        rejected = outcomes[ids[name]]
        assert isinstance(rejected, TaskRejected), (name, rejected)
        assert rejected.error.type == "invalid" and field in rejected.error.message
        assert "less than or equal to 2147483647" in rejected.error.message
        assert rejected.workflow == "hello"
        assert rejected.dlq is not None and rejected.dlq.topic.endswith(".tasks.v1.dlq")
    deep = outcomes[ids["deep"]]
    assert isinstance(deep, TaskRejected), deep
    assert deep.error.type == "undecodable" and "nested deeper than 64" in deep.error.message
    undecodable = outcomes[ids["undecodable"]]
    assert isinstance(undecodable, TaskRejected) and undecodable.error.type == "undecodable"
    late = outcomes[ids["late"]]
    assert isinstance(late, TaskCompleted) and late.output == {"text": "hi"}
    product = outcomes[ids["product"]]
    assert isinstance(product, TaskFailed), product
    assert product.error.type == "template_error" and product.error.step_id == "multiply"
    assert "Integer exceeds 64-bit range" in product.error.message

    # nothing is lost: each refused record is in the dead-letter topic, with its reason
    topics = Topics(stack.settings.topic_prefix)
    records = await read_topic(stack.bootstrap, Topics.dlq(topics.tasks), at_least=4)
    reasons = {
        r.key.decode(): dlq_headers([(k, v) for k, v in r.headers])["reason"]
        for r in records
        if r.key is not None
    }
    assert {name: reasons.get(ids[name]) for name in [*hostile, "undecodable"]} == {
        "priority": "invalid",
        "tokens": "invalid",
        "deep": "undecodable",
        "undecodable": "undecodable",
    }


async def test_jinja_for_the_template_capability_passes_through_with_raw(stack: Stack) -> None:
    task = TaskSubmitted(
        task_id=tid("jinja"),
        workflow="test-jinja",
        input={"name": "ada lovelace", "orders": [7, 9]},
    )
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(outcome, TaskCompleted), outcome
    assert outcome.output == {
        "letter": {"text": "Dear Ada Lovelace, #7 #9"},
        "subject": {"line": "Orders for {{ name }} (2)"},
    }


async def test_a_step_whose_request_is_lost_is_re_driven_after_the_default_watch(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = {"PODIUM_ROUTER_STEP_TIMEOUT_S": "2"}
    with Stack(stack_settings(kafka_bootstrap, tmp_path), env=env) as stack:
        task = TaskSubmitted(task_id=tid("lost"), workflow="test-lost", input={"k": 1})
        async with PodiumClient(stack.settings) as client:
            await client.submit(task)
            outcome = (await client.wait_for([task.task_id], 40))[task.task_id]
        assert isinstance(outcome, TaskCompleted), outcome
        assert outcome.output == {"k": 1}
        # the first request was sent, and nobody answered it
        topics = Topics(stack.settings.topic_prefix)
        sent = await read_topic(stack.bootstrap, topics.steps("nowhere"), at_least=1)
        assert [r.key for r in sent] == [f"{task.task_id}/only".encode()]

        events = task_history(stack.settings, task.task_id)["history"]
    seen = [(e["event"], e["attempt"], e["pool"]) for e in events]
    assert seen == [
        ("accepted", None, None),
        ("step_dispatched", 1, "nowhere"),
        ("step_timed_out", 1, "nowhere"),
        ("retry_scheduled", 2, "default"),
        ("step_completed", 2, "default"),
        ("completed", None, None),
    ], seen
    dispatched, timed_out = events[1], events[2]
    assert "(timeout 2.0s, the default)" in dispatched["next"]
    assert "no result within 2.0s (router watchdog)" in timed_out["cause"]
    assert timed_out["next"] == "handed to recovery"
