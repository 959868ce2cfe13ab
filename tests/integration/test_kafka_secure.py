"""`podium up --broker kafka --secure`: a local Apache Kafka that speaks only SASL_SSL
(SCRAM-SHA-512 over TLS), or only SSL with client certificates (`--auth mtls`), each
service connecting as its own principal; the DLQ replay journey run by the CLI with the
operator's api token (the api reads and replays under its own principal)."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from pydantic import SecretStr

from podium.client import PodiumClient
from podium.stack import Stack, password_file
from podium_contracts import TaskCompleted, TaskFailed, TaskRejected, TaskSubmitted
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
from tests.support.router_db import task_history, task_status

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only]

# A refused process exits at once; retrying its start-up instead took about two minutes
# (ensure_topics' 30 attempts). The bound leaves room for a Python start-up on a loaded
# 2-core machine: importing the service alone took 5 s here at a load average of 11.
REFUSED_PROCESS_S = 30


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(
        broker="kafka",
        home=tmp_path_factory.mktemp("podium-secure"),
        topic_prefix=unique_prefix(),
        workflows=str(REPO / "workflows") + ":" + str(REPO / "tests" / "workflows"),
        tenants="a,b",
    )
    # A "backup" pool for the DLQ journey's fallback; the drills fail on purpose, so the
    # circuit breakers stay out of the way (as in test_recovery.py).
    env = {"PODIUM_BREAKER_FAILURES": "1000"}
    # The api too: `podium dlq list/show/replay` go through it, as `podium up` runs it.
    with Stack(settings, pools=("default", "backup"), env=env, secure=True, api=True) as s:
        s.operator_token()
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
        "executor-backup-1": "executor-backup",  # the stack numbers executors across pools
        "api": "api",
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
    assert elapsed < REFUSED_PROCESS_S, (elapsed, output)
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


async def assert_may_not_produce_tasks(settings: Settings, client_id: str) -> None:
    """The broker refuses these credentials a write to the shared tasks topic."""
    producer = make_producer(settings, client_id)
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(Topics(settings.topic_prefix).tasks, b"{}", key=b"x")
    finally:
        await producer.stop()


async def test_the_executor_may_not_produce_tasks(secure_stack: Stack) -> None:
    settings = as_principal(secure_stack, "executor-default")
    await assert_may_not_produce_tasks(settings, "executor-as-upstream")


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


def podium(
    stack: Stack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as the operator principal, configured as `podium up` prints it."""
    return subprocess.run(
        [sys.executable, "-m", "podium", *args],
        env=env or stack.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_dlq_replay_journey_runs_as_the_operator(
    secure_stack: Stack, tmp_path: Path
) -> None:
    """A step dead-lettered after its retries and fallback; `podium dlq list/show/replay`
    through the api with the operator token `podium up` writes (the api reads and sends
    over SASL_SSL as its own principal); the task resumes and completes, each effect
    once."""
    cli_env = secure_stack.child_env()
    assert cli_env["PODIUM_SASL_USERNAME"] == "operator"
    assert "PODIUM_SASL_PASSWORD" not in cli_env  # the CLI reads the file, as services do
    topics = Topics(secure_stack.settings.topic_prefix)
    effects, fixed = tmp_path / "effects.jsonl", tmp_path / "fixed"
    task = TaskSubmitted(
        task_id=f"fallback-{uuid.uuid4().hex[:8]}",
        workflow="recovery-fallback",
        input={"path": str(effects), "fixed": str(fixed)},
    )
    backup_dlq = topics.dlq(topics.steps("backup"))
    async with PodiumClient(secure_stack.settings) as client:
        await client.submit(task)
        failed = (await client.wait_for([task.task_id], 60))[task.task_id]
        assert isinstance(failed, TaskFailed), failed
        assert failed.dlq is not None and failed.dlq.topic == backup_dlq

        listed = podium(secure_stack, "dlq", "list", backup_dlq, "--json")
        assert listed.returncode == 0, listed.stderr
        (summary,) = orjson.loads(listed.stdout)
        assert summary["topic"] == backup_dlq and summary["count"] >= 1

        shown = podium(secure_stack, "dlq", "show", backup_dlq, "--task", task.task_id, "--json")
        assert shown.returncode == 0, shown.stderr
        (record,) = orjson.loads(shown.stdout)
        assert record["id"] == failed.dlq.record_id and record["error_class"] == "retryable"

        fixed.touch()
        client.outcomes.pop(task.task_id)
        replayed = podium(
            secure_stack, "dlq", "replay", backup_dlq, "--task", task.task_id, "--json"
        )
        assert replayed.returncode == 0, replayed.stderr
        assert orjson.loads(replayed.stdout)["replayed"] == 1
        done = (await client.wait_for([task.task_id], 60))[task.task_id]
    assert isinstance(done, TaskCompleted), done
    assert done.output["value"] == "after"
    assert task_status(secure_stack.settings, task.task_id)["status"] == "completed"
    history = task_history(secure_stack.settings, task.task_id)["history"]
    assert [e["pool"] for e in history if e["event"] == "retry_scheduled"] == ["backup", "backup"]
    lines = [orjson.loads(x) for x in effects.read_text().splitlines()]
    assert Counter(x["key"] for x in lines) == {
        f"{task.task_id}/before": 1,
        f"{task.task_id}/after": 1,
    }


def test_the_cli_with_a_wrong_password_says_so_in_one_line(secure_stack: Stack) -> None:
    wrong = secure_stack.settings.home / "secrets" / "wrong-cli.password"
    write_secret(wrong, b"not-the-password")
    env = {**secure_stack.child_env(), "PODIUM_SASL_PASSWORD_FILE": str(wrong)}
    started = time.monotonic()
    # `submit`: a command of the CLI's own Kafka client (dlq list asks the api).
    run = podium(secure_stack, "submit", "-w", "hello", env=env)
    assert time.monotonic() - started < REFUSED_PROCESS_S
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and "refused" in run.stderr, run.stderr
    assert "not-the-password" not in run.stderr


# -- mTLS: `podium up --broker kafka --secure --auth mtls` ---------------------------------


@pytest.fixture(scope="module")
def mtls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings(
        broker="kafka",
        home=tmp_path_factory.mktemp("podium-mtls"),
        topic_prefix=unique_prefix(),
        workflows=str(REPO / "workflows") + ":" + str(REPO / "tests" / "workflows"),
        tenants="a,b",
    )
    with Stack(settings, secure=True, auth="mtls") as s:
        yield s


async def test_hello_completes_over_mtls(mtls_stack: Stack) -> None:
    s = mtls_stack.settings
    assert (s.security_protocol, s.sasl_mechanism, s.sasl_password) == ("SSL", None, None)
    assert s.ssl_certfile is not None and s.ssl_certfile.name == "operator.pem"
    task = TaskSubmitted(task_id=f"hello-{uuid.uuid4().hex[:8]}", workflow="hello", input={"a": 2})
    async with PodiumClient(s) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
    assert isinstance(outcome, TaskCompleted), outcome
    assert outcome.output == {"a": 2}


def test_each_service_has_its_own_certificate_and_a_private_key(mtls_stack: Stack) -> None:
    seen = {}
    for p in mtls_stack.processes:
        env = mtls_stack.child_env(p.pool, p.home, p.name)
        assert env["PODIUM_SECURITY_PROTOCOL"] == "SSL"
        assert not any(k.startswith("PODIUM_SASL_") for k in env), env
        cert, key = Path(env["PODIUM_SSL_CERTFILE"]), Path(env["PODIUM_SSL_KEYFILE"])
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        seen[p.instance] = cert.stem
    assert seen == {
        "router": "router",
        "memory": "memory",
        "recovery": "recovery",
        "executor-default-0": "executor-default",
    }


def as_certificate(stack: Stack, user: str) -> Settings:
    """The mTLS stack's client settings with ``user``'s certificate instead."""
    assert stack.security is not None
    issued = stack.security.clients[user]
    return stack.settings.model_copy(
        update={"ssl_certfile": issued.cert, "ssl_keyfile": issued.key}
    )


async def test_the_executors_certificate_may_not_produce_tasks(mtls_stack: Stack) -> None:
    settings = as_certificate(mtls_stack, "executor-default")
    await assert_may_not_produce_tasks(settings, "executor-cert-as-upstream")


async def test_a_client_certificate_of_another_ca_is_refused(
    mtls_stack: Stack, tmp_path: Path
) -> None:
    # The same CN as a real service: only the CA that signed it tells them apart.
    forged = LocalCA.ensure(tmp_path / "other-ca").issue("router", server=False)
    bad = mtls_stack.settings.model_copy(
        update={"ssl_certfile": forged.cert, "ssl_keyfile": forged.key}
    )
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="refused our client certificate"):
        await ensure_topics(bad, [])
    assert time.monotonic() - started < 10


def test_a_service_with_a_certificate_of_another_ca_exits_with_one_line(
    mtls_stack: Stack, tmp_path: Path
) -> None:
    forged = LocalCA.ensure(tmp_path / "other-ca").issue("router", server=False)
    env = mtls_stack.child_env(None, None, "router")
    env["PODIUM_SSL_CERTFILE"], env["PODIUM_SSL_KEYFILE"] = str(forged.cert), str(forged.key)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "podium_router"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert time.monotonic() - started < REFUSED_PROCESS_S, output
    assert result.returncode == 2, output
    lines = [line for line in output.splitlines() if "refused our client certificate" in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output


def test_the_cli_over_mtls_and_with_a_foreign_certificate(
    mtls_stack: Stack, tmp_path: Path
) -> None:
    # `submit`: a command of the CLI's own Kafka client (dlq list asks the api).
    sent = podium(mtls_stack, "submit", "-w", "hello", "--json")
    assert sent.returncode == 0, sent.stderr
    forged = LocalCA.ensure(tmp_path / "other-ca").issue("operator", server=False)
    env = {
        **mtls_stack.child_env(),
        "PODIUM_SSL_CERTFILE": str(forged.cert),
        "PODIUM_SSL_KEYFILE": str(forged.key),
    }
    started = time.monotonic()
    run = podium(mtls_stack, "submit", "-w", "hello", env=env)
    assert time.monotonic() - started < REFUSED_PROCESS_S
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert "refused our client certificate" in run.stderr, run.stderr
    # A trusted certificate whose principal the ACLs deny: one line too, no traceback.
    executor = mtls_stack.child_env("default", None, "executor")
    env = {
        **mtls_stack.child_env(),
        **{k: executor[k] for k in ("PODIUM_SSL_CERTFILE", "PODIUM_SSL_KEYFILE")},
    }
    denied = podium(mtls_stack, "submit", "-w", "hello", "--input", "{}", env=env)
    assert denied.returncode == 2, denied.stderr
    assert denied.stderr.count("\n") == 1, denied.stderr
    assert "denied this principal on" in denied.stderr and ".tasks.v1" in denied.stderr


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
