"""`podium up --broker kafka --secure`: a local Apache Kafka that speaks only SASL_SSL
(SCRAM-SHA-512 over TLS), each service connecting as its own principal."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from pydantic import SecretStr

from podium.client import PodiumClient
from podium.stack import Stack, password_file
from podium_contracts import TaskCompleted, TaskRejected, TaskSubmitted
from podium_shared import Settings, Topics, dlq_headers
from podium_shared.kafka import (
    BrokerRefused,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
)
from podium_shared.tls import LocalCA, write_secret
from tests.conftest import REPO, unique_prefix

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only]


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(
        broker="kafka",
        home=tmp_path_factory.mktemp("podium-secure"),
        topic_prefix=unique_prefix(),
        workflows=str(REPO / "workflows") + ":" + str(REPO / "tests" / "workflows"),
        tenants="a,b",
    )
    with Stack(settings, secure=True) as s:
        yield s


async def test_hello_completes_on_the_secure_stack(secure_stack: Stack) -> None:
    s = secure_stack.settings
    assert (s.security_protocol, s.sasl_mechanism, s.sasl_username) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "operator",
    )
    task = TaskSubmitted(task_id=f"hello-{uuid.uuid4().hex[:8]}", workflow="hello", input={"a": 1})
    async with PodiumClient(s) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(outcome, TaskCompleted), outcome
    assert outcome.output == {"a": 1}


def test_each_service_has_its_own_principal_and_a_private_password_file(
    secure_stack: Stack,
) -> None:
    users = {
        p.instance: secure_stack.child_env(p.pool, p.home, p.name)["PODIUM_SASL_USERNAME"]
        for p in secure_stack.processes
    }
    assert users == {
        "router": "router",
        "memory": "memory",
        "recovery": "recovery",
        "executor-default-0": "executor-default",
    }
    for user in [*users.values(), "operator"]:
        path = password_file(secure_stack.settings.home, user)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env = secure_stack.child_env(None, None, "router")
    assert "PODIUM_SASL_PASSWORD" not in env  # by file only


def test_a_wrong_password_stops_a_service_with_one_clear_line(secure_stack: Stack) -> None:
    wrong = secure_stack.settings.home / "secrets" / "wrong.password"
    write_secret(wrong, b"not-the-password")
    env = secure_stack.child_env(None, None, "router")
    env["PODIUM_SASL_PASSWORD_FILE"] = str(wrong)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "podium_router"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert elapsed < 20, (elapsed, output)
    assert "invalid credentials" in output, output
    assert "not-the-password" not in output
    # The refusal is one line of ours (beside aiokafka's own log line), not a retry storm.
    assert result.returncode == 2, output
    lines = [line for line in output.splitlines() if "refused user 'router'" in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output


async def test_a_wrong_password_fails_a_client_within_seconds(secure_stack: Stack) -> None:
    bad = secure_stack.settings.model_copy(update={"sasl_password": SecretStr("wrong")})
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="invalid credentials"):
        await ensure_topics(bad, [])
    assert time.monotonic() - started < 10


async def test_an_untrusted_broker_certificate_is_refused(
    secure_stack: Stack, tmp_path: Path
) -> None:
    other = LocalCA.ensure(tmp_path / "other-ca")
    untrusting = secure_stack.settings.model_copy(update={"ssl_cafile": other.cert})
    with pytest.raises(BrokerRefused, match="CERTIFICATE_VERIFY_FAILED"):
        await ensure_topics(untrusting, [])


async def test_a_plaintext_client_is_refused_on_the_secure_listener(
    secure_stack: Stack,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=secure_stack.bootstrap, request_timeout_ms=5000)
    with pytest.raises(KafkaConnectionError):
        await admin.start()
    await admin.close()


def as_principal(stack: Stack, user: str) -> Settings:
    """The stack's client settings, logged in as ``user`` instead of the operator."""
    password = password_file(stack.settings.home, user).read_text().strip()
    return stack.settings.model_copy(
        update={"sasl_username": user, "sasl_password": SecretStr(password)}
    )


async def test_the_executor_may_not_produce_tasks(secure_stack: Stack) -> None:
    settings = as_principal(secure_stack, "executor-default")
    producer = make_producer(settings, "executor-as-upstream")
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(Topics(settings.topic_prefix).tasks, b"{}", key=b"x")
    finally:
        await producer.stop()


async def test_the_executor_may_not_read_memorys_topics(secure_stack: Stack) -> None:
    settings = as_principal(secure_stack, "executor-default")
    topics = Topics(settings.topic_prefix)
    consumer = make_consumer(settings, group_id=None, client_id="executor-as-memory")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topics.steps("memory"), 0)])
        await consumer.seek_to_beginning()
        with pytest.raises(TopicAuthorizationFailedError):
            await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()


async def test_a_malformed_task_is_dead_lettered_by_the_router_principal(
    secure_stack: Stack,
) -> None:
    settings = secure_stack.settings
    topics = Topics(settings.topic_prefix)
    key = f"bad-{uuid.uuid4().hex[:8]}".encode()
    producer = make_producer(settings, "operator-hostile")
    await producer.start()
    try:
        await producer.send_and_wait(topics.tasks, b"{not json", key=key)
    finally:
        await producer.stop()
    consumer = make_consumer(settings, group_id=None, client_id="operator-dlq")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topics.dlq(topics.tasks), 0)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + 30
        found = []
        while not found and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            found = [r for rs in batches.values() for r in rs if r.key == key]
    finally:
        await consumer.stop()
    assert found and found[0].value == b"{not json"


# --- tenants bound to their own topics: the broker enforces it ---------------------------------


async def test_a_tenant_submits_and_hears_back_on_its_own_topics_as_its_own_principal(
    secure_stack: Stack,
) -> None:
    settings = as_principal(secure_stack, "tenant-a")
    task = TaskSubmitted(task_id=f"ta-{uuid.uuid4().hex[:8]}", workflow="hello", input={"a": 1})
    async with PodiumClient(settings, tenant="a") as client:
        assert client.ingress == Topics(settings.topic_prefix).tenant_tasks("a")
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(outcome, TaskCompleted), outcome
    assert (outcome.tenant, outcome.output) == ("a", {"a": 1})


@pytest.mark.parametrize("topic", ["tenant_tasks", "tasks"])
async def test_tenant_b_may_not_write_tenant_as_topic_nor_the_shared_one(
    secure_stack: Stack, topic: str
) -> None:
    settings = as_principal(secure_stack, "tenant-b")
    topics = Topics(settings.topic_prefix)
    name = topics.tenant_tasks("a") if topic == "tenant_tasks" else topics.tasks
    value = b'{"task_id": "x", "workflow": "hello", "tenant": "a"}'
    producer = make_producer(settings, "tenant-b-as-a")
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(name, value, key=b"x")
    finally:
        await producer.stop()


TOPIC_AUTHORIZATION_FAILED = 29  # Kafka's error code


async def described(settings: Settings, topic: str) -> int:
    """The broker's answer to ``settings``' principal asking for ``topic``'s metadata."""
    admin = make_admin(settings, "tenant-describe")
    await admin.start()
    try:
        [answer] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return int(answer["error_code"])


@pytest.mark.parametrize("topic", ["tenant_task_events", "task_events"])
async def test_tenant_b_may_not_read_tenant_as_outcomes_nor_the_shared_ones(
    secure_stack: Stack, topic: str
) -> None:
    b, a = as_principal(secure_stack, "tenant-b"), as_principal(secure_stack, "tenant-a")
    topics = Topics(b.topic_prefix)
    name = topics.tenant_task_events("a") if topic == "tenant_task_events" else topics.task_events
    # Read implies Describe: a principal the broker will not even describe the topic to
    # cannot fetch from it (an assigned consumer just never gets a leader to ask).
    assert await described(b, name) == TOPIC_AUTHORIZATION_FAILED
    assert await described(b, topics.tenant_task_events("b")) == 0  # its own, it may
    if topic == "tenant_task_events":
        assert await described(a, name) == 0


async def test_a_claim_of_another_tenant_is_dead_lettered_with_the_reason(
    secure_stack: Stack,
) -> None:
    settings = as_principal(secure_stack, "tenant-b")
    topics = Topics(settings.topic_prefix)
    task_id = f"claim-{uuid.uuid4().hex[:8]}"
    async with PodiumClient(settings, tenant="b") as b:
        await b.submit(TaskSubmitted(task_id=task_id, workflow="hello", tenant="a"))
        rejected = (await b.wait_for([task_id], 30))[task_id]
    assert isinstance(rejected, TaskRejected), rejected
    assert (rejected.tenant, rejected.error.type) == ("b", "tenant_mismatch")
    dlq = topics.dlq(topics.tenant_tasks("b"))
    consumer = make_consumer(secure_stack.settings, group_id=None, client_id="operator-dlq")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(dlq, 0)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + 30
        found = []
        while not found and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            found = [r for rs in batches.values() for r in rs if r.key == task_id.encode()]
    finally:
        await consumer.stop()
    assert found, f"no dead letter for {task_id} in {dlq}"
    assert dlq_headers(found[0].headers)["reason"] == "tenant_mismatch"
