"""Dead letters through the api over the real broker and the real service processes:
a step dead-lettered, its record listed over HTTP, a dry run that publishes nothing,
a replay that completes the task, the live stream's ``dead_letter`` event, replay
refused to a viewer, nothing of one tenant's dead letters for another's token, and
the audit trail naming who replayed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition

from podium.stack import Stack
from podium_shared import Settings, Topics
from podium_shared.kafka import make_consumer
from tests.conftest import REPO, unique_prefix
from tests.support.api import api_client, api_stack, make_token, run_of, tid, wait_status
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"PODIUM_BREAKER_FAILURES": "1000"}  # the step fails on purpose
    with api_stack(kafka_bootstrap, tmp_path_factory, "podium-api-dlq", env=env) as s:
        yield s


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(stack) as client:
        yield client


async def end_offsets(stack: Stack, topic: str) -> dict[int, int]:
    consumer = make_consumer(stack.settings, group_id=None, client_id="test-api-dlq")
    await consumer.start()
    try:

        async def known() -> bool:
            # A consumer of no subscription learns every topic on a metadata update.
            await consumer._client.force_metadata_update()
            return bool(consumer.partitions_for_topic(topic))

        await wait_until(known, 30, f"{topic} in the metadata")
        parts = consumer.partitions_for_topic(topic)
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def dead_letter_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The ``dead_letter`` events of a Server-Sent Events response."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields.get("event") == "dead_letter":
                yield json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def test_a_dead_letter_listed_dry_run_replayed_and_audited(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    a, b = tid("acme"), tid("other")
    submit_a = make_token(stack, "submitter", a)
    view_a = make_token(stack, "viewer", a)
    ops_a = make_token(stack, "operator", a, name="alice")
    view_b, ops_b = make_token(stack, "viewer", b), make_token(stack, "operator", b)
    topics = Topics(stack.settings.topic_prefix)
    steps, dlq = topics.steps("default"), topics.dlq(topics.steps("default"))
    fixed = stack.settings.home / tid("fixed")
    task_id = tid("dlq")
    timeout = httpx.Timeout(10, read=60)  # a quiet stream still beats every ~15 s
    async with (
        httpx.AsyncClient(base_url=stack.api_url, timeout=timeout) as client,
        client.stream("GET", "/v1/events", headers=view_a) as stream,
    ):
        assert stream.status_code == 200
        body = {"task_id": task_id, "workflow": "api-dlq", "input": {"fixed": str(fixed)}}
        assert (await api.post("/v1/tasks", json=body, headers=submit_a)).status_code == 202
        events = dead_letter_events(stream)

        async def announced() -> dict[str, Any]:
            async for event in events:
                if event["task_id"] == task_id:
                    return event
            raise AssertionError("the stream ended")

        event = await asyncio.wait_for(announced(), 90)
        await events.aclose()
    run = await wait_status(api, task_id, view_a, "failed")
    (step,) = run["steps"]
    assert step["status"] == "abandoned" and step["dlq"]["topic"] == dlq
    record_id = step["dlq"]["record_id"]
    assert (event["topic"], event["id"], event["step_id"]) == (dlq, record_id, "shaky")
    assert event["tenant"] == a

    # The record, as its tenant's viewer sees it; nothing of it for tenant B.
    url = f"/v1/dead-letters/{dlq}"
    listed = await api.get(f"{url}/records", params={"task_id": task_id}, headers=view_a)
    assert listed.status_code == 200, listed.text
    (record,) = listed.json()["records"]
    assert record["id"] == record_id and record["task_id"] == task_id
    assert record["reason"] == "step_abandoned" and record["error_type"] == "unavailable"
    assert record["headers"]["podium-dlq-original-topic"] == steps
    assert record["value"]["step_id"] == "shaky" and record["value"]["tenant"] == a
    assert record["locator"] == f"{record['partition']}:{record['offset']}"
    theirs = await api.get(f"{url}/records", params={"task_id": task_id}, headers=view_b)
    assert theirs.status_code == 200 and theirs.json()["records"] == []
    summary = (await api.get("/v1/dead-letters", headers=view_b, timeout=120)).json()
    assert all(t["count"] == 0 for t in summary["topics"] if t["topic"] == dlq)

    # Replay: operators only; another tenant's operator selects nothing of it.
    ask = {"task_id": task_id, "dry_run": False}
    assert (await api.post(f"{url}/replay", json=ask, headers=view_a)).status_code == 403
    assert (await api.post(f"{url}/replay", json=ask, headers=submit_a)).status_code == 403
    before = await end_offsets(stack, steps)
    other = await api.post(f"{url}/replay", json=ask | {"ids": [record_id]}, headers=ops_b)
    assert other.status_code == 200 and other.json()["selected"] == 0
    # A dry run says what it would send, and sends nothing.
    fixed.touch()
    dry = await api.post(f"{url}/replay", json=ask | {"dry_run": True}, headers=ops_a)
    assert dry.status_code == 200, dry.text
    assert dry.json()["dry_run"] is True
    assert [(r["id"], r["to"]) for r in dry.json()["replayed"]] == [(record_id, steps)]
    assert await end_offsets(stack, steps) == before
    assert (await run_of(api, task_id, view_a))["status"] == "failed"
    # The replay: the step runs again, now fixed, and the task completes.
    done = await api.post(f"{url}/replay", json=ask, headers=ops_a)
    assert done.status_code == 200, done.text
    assert [r["id"] for r in done.json()["replayed"]] == [record_id]
    completed = await wait_status(api, task_id, view_a, "completed")
    assert completed["steps"][0]["status"] == "completed"
    again = (await api.post(f"{url}/replay", json=ask, headers=ops_a)).json()
    assert again["replayed"] == []
    assert [s["why"] for s in again["skipped"]] == ["task already completed"]

    # The audit trail: each replay of A's operator, with who; none of it for B's.
    assert (await api.get("/v1/audit", headers=view_a)).status_code == 403
    log = (await api.get("/v1/audit", headers=ops_a)).json()["entries"]
    mine = [e for e in log if e["target"] == dlq and e["who"] == "alice"]
    assert [(e["action"], e["detail"]["result"]) for e in mine] == [
        ("replay", "replayed"),
        ("replay", "replayed"),
        ("replay", "dry_run"),
    ]
    assert mine[1]["detail"]["ids"] == [record_id] and mine[1]["tenant"] == a
    assert mine[0]["detail"]["replayed"] == 0 and mine[2]["detail"]["dry_run"] is True
    theirs_log = (await api.get("/v1/audit", headers=ops_b)).json()["entries"]
    assert [e["detail"]["selected"] for e in theirs_log] == [0]  # its own empty replay
    assert all(e["who"] != "alice" for e in theirs_log)


@pytest.mark.kafka_only
async def test_the_api_replays_as_its_own_principal_on_a_secure_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Its ACLs let it read the step DLQ and write the record back to the pool's
    topic (and nothing forces the operator's principal in between)."""
    settings = Settings(
        broker="kafka",
        home=tmp_path_factory.mktemp("podium-api-dlq-secure"),
        topic_prefix=unique_prefix(),
        workflows=str(REPO / "workflows") + ":" + str(REPO / "tests" / "workflows"),
    )
    env = {"PODIUM_BREAKER_FAILURES": "1000"}
    with Stack(settings, secure=True, api=True, env=env) as stack:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as api:
            tenant = tid("acme")
            submit = make_token(stack, "submitter", tenant)
            ops = make_token(stack, "operator", tenant, name="secure-ops")
            fixed = settings.home / tid("fixed")
            task_id = tid("secure-dlq")
            body = {"task_id": task_id, "workflow": "api-dlq", "input": {"fixed": str(fixed)}}
            assert (await api.post("/v1/tasks", json=body, headers=submit)).status_code == 202
            run = await wait_status(api, task_id, ops, "failed")
            dlq = run["steps"][0]["dlq"]["topic"]
            fixed.touch()
            ask = {"task_id": task_id, "dry_run": False}
            r = await api.post(f"/v1/dead-letters/{dlq}/replay", json=ask, headers=ops)
            assert r.status_code == 200, r.text
            assert len(r.json()["replayed"]) == 1
            await wait_status(api, task_id, ops, "completed")
