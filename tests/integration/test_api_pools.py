"""``GET /v1/pools`` and ``GET /v1/workflows`` over the real broker and the real
service processes: two executor replicas in one pool, their rate limit and an
opened circuit as they report them, the memory service's pool, and the lag of a
pool nobody consumes (on Tansu too, whose end offsets are one batch short)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from podium.stack import Stack
from podium_shared import Settings, Topics
from podium_shared.kafka import ensure_topics, make_producer
from podium_shared.topics import TopicSpec
from tests.conftest import REPO, unique_prefix
from tests.support.api import api_client, api_stack, make_token
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

STARTUP_S = 180.0

ENV = {
    # Reports every second, so the test sees a change within seconds.
    "PODIUM_EXECUTOR_STATUS_INTERVAL_S": "1",
    # One provider failure opens its circuit, for longer than the test runs.
    "PODIUM_EXECUTOR_BREAKER_FAILURES": "1",
    "PODIUM_EXECUTOR_BREAKER_COOLDOWN_S": "600",
    "PODIUM_EXECUTOR_RATE_LIMIT_PER_S": "50",
    "PODIUM_EXECUTOR_RATE_LIMIT_BURST": "80",
}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Up to 3 minutes to start: the CI machine runs several stacks at once.
    with api_stack(
        kafka_bootstrap,
        tmp_path_factory,
        "podium-api-pools",
        env=ENV,
        executors=2,
        start_timeout_s=STARTUP_S,
    ) as s:
        yield s


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(stack) as client:
        yield client


async def pools(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    r = await api.get("/v1/pools", headers=headers)
    assert r.status_code == 200, r.text
    return {p["name"]: p for p in r.json()["pools"]}


async def test_pools_show_their_replicas_and_rate_limit(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    h = make_token(stack, "viewer", "acme")
    topics = Topics(stack.settings.topic_prefix)
    assert (await api.get("/v1/pools")).status_code == 401

    async def both_replicas_report() -> bool:
        default = (await pools(api, h)).get("default")
        return default is not None and default["replicas"] == 2 and len(default["reports"]) == 2

    await wait_until(both_replicas_report, 60, "both executor replicas in GET /v1/pools")
    found = await pools(api, h)
    default = found["default"]
    assert default["topic"] == topics.steps("default")
    assert default["rate_limit"] == {"per_s": 50.0, "burst": 80}
    assert {r["concurrency"] for r in default["reports"]} == {16}
    assert len({m["member_id"] for m in default["members"]}) == 2
    assert sorted(p["partition"] for p in default["lag"]) == list(range(8))
    # The memory service consumes its pool: one member, and no report of breakers.
    memory = found["memory"]
    assert memory["replicas"] == 1 and memory["rate_limit"] is None
    assert memory["breakers"] == {}


async def test_an_open_circuit_shows_in_its_pool(stack: Stack, api: httpx.AsyncClient) -> None:
    h = make_token(stack, "submitter", "acme")
    # Its first attempt fails (retryable): with a threshold of one, the circuit of the
    # provider "flaky" opens on the replica that ran it, for 600 s.
    task_id = f"brk-{uuid.uuid4().hex[:8]}"
    body = {"task_id": task_id, "workflow": "recovery-breaker"}
    assert (await api.post("/v1/tasks", json=body, headers=h)).status_code == 202

    async def opened() -> bool:
        breaker = (await pools(api, h))["default"]["breakers"].get("flaky")
        return breaker is not None and breaker["state"] == "open"

    await wait_until(opened, 60, "the flaky provider's circuit open in GET /v1/pools")
    breaker = (await pools(api, h))["default"]["breakers"]["flaky"]
    (replica,) = [b for b in breaker["replicas"].values() if b["state"] == "open"]
    assert replica["failures"] == 1 and 0 < replica["retry_in_s"] <= 600


async def test_the_lag_of_a_pool_nobody_consumes(stack: Stack, api: httpx.AsyncClient) -> None:
    h = make_token(stack, "viewer", "*")
    topic = Topics(stack.settings.topic_prefix).steps("idle")
    await ensure_topics(stack.settings, [TopicSpec(topic, 2, "step_id", "a pool with no replica")])
    producer = make_producer(stack.settings, client_id="podium-test-idle")
    await producer.start()
    try:
        for i in range(3):  # three sends, three batches: Tansu reports the end as 2
            await producer.send_and_wait(topic, b"{}", key=f"s{i}".encode(), partition=0)
    finally:
        await producer.stop()

    async def lagging() -> bool:
        idle = (await pools(api, h)).get("idle")
        return idle is not None and idle["total_lag"] == 3

    await wait_until(lagging, 30, "the idle pool lagging by 3")
    idle = (await pools(api, h))["idle"]
    assert idle["replicas"] == 0 and idle["members"] == []
    assert idle["lag"] == [{"partition": 0, "lag": 3}, {"partition": 1, "lag": 0}]
    assert idle["breakers"] == {} and idle["rate_limit"] is None


async def test_workflows_and_their_versions(stack: Stack, api: httpx.AsyncClient) -> None:
    h = make_token(stack, "viewer", "acme")
    r = await api.get("/v1/workflows", headers=h)
    assert r.status_code == 200, r.text
    found = {w["name"]: w for w in r.json()["workflows"]}
    assert {"hello", "recovery-breaker", "chain3"} <= set(found)
    (hello,) = found["hello"]["versions"]
    assert (hello["version"], hello["problem"]) == (1, None)
    assert hello["steps"] == [{"id": "echo", "uses": "echo", "pool": None, "needs": []}]


@pytest.mark.kafka_only
async def test_pools_on_a_secure_stack_with_the_apis_own_acls(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Describe on the pools' groups and Read on the status topic are enough: members,
    lag and the executor's report (written as principal ``executor-default``)."""
    settings = Settings(
        broker="kafka",
        home=tmp_path_factory.mktemp("podium-api-pools-secure"),
        topic_prefix=unique_prefix(),
        workflows=str(REPO / "workflows"),
    )
    env = {"PODIUM_EXECUTOR_STATUS_INTERVAL_S": "1"}
    with Stack(settings, secure=True, api=True, env=env) as stack:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as api:
            h = make_token(stack, "viewer", "acme")

            async def reported() -> bool:
                default = (await pools(api, h)).get("default")
                return default is not None and len(default["reports"]) == 1

            await wait_until(reported, 60, "the executor's report in GET /v1/pools")
            found = await pools(api, h)
            assert found["default"]["replicas"] == 1
            assert found["default"]["rate_limit"] == {"per_s": None, "burst": None}
            assert found["memory"]["replicas"] == 1
