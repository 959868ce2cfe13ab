"""Kafka ACLs for podium's principals, generated from the topic declarations.

Each role gets exactly what ``podium_contracts.asyncapi.CHANNELS`` says it reads and
writes: Read on the topics it consumes (and on its own consumer group), Write on the
topics it produces and on the DLQs of the topics it consumes, and IdempotentWrite on
the cluster (its producers are idempotent). Two grants are wider than one topic:

- Describe on every topic under the prefix, for every role: each service checks at
  start-up that all declared topics exist (``ensure_topics``), and a topic it may not
  describe would look missing. Describe shows a topic's metadata, never its records.
- Write on ``<prefix>.steps.`` (prefixed) for the router and recovery, which send
  steps to any pool, including pools started after the ACLs were written; the router
  may also Create those topics, for the pools its workflows name.

A tenant bound to topics of its own (``PODIUM_TENANTS``) has the principal
``tenant-<name>``, which may Write its ingress topic ``<prefix>.tenant.<name>.tasks.v1``
and Read its own outcomes ``<prefix>.tenant.<name>.task-events.v1`` and groups named
``<prefix>-tenant-<name>`` (or starting ``<prefix>-tenant-<name>.``), and nothing else:
no Describe under the prefix, so it does not even list the other tenants' topics. The
router reads each ingress topic (and writes its DLQ) and writes each outcome topic.

``api``, the operators' API service (issue 17), reads what its channels say (the run's
story: tasks, task events, step results and failures) with a group per database, writes
tasks, reads each DLQ to list dead letters, and writes each DLQ's source topic to replay
them (``POST /v1/dead-letters/{topic}/replay``, operators' tokens only). It writes no DLQ.
It may Describe the pools' consumer groups (members, committed offsets: lag).

``operator`` (the CLI and ``podium up``) may do anything to topics and groups under
the prefix and create topics; it is the principal a human uses, not a service.
``apply`` writes them with CreateAcls as a principal that may (the brokers' own).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest

from podium_contracts.asyncapi import CHANNELS, UPSTREAM
from podium_contracts.vocabulary import TOPIC_PREFIX
from podium_shared.topics import Topics


# Kafka's protocol codes (org.apache.kafka.common.acl / .resource).
class Resource(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class Operation(IntEnum):
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DESCRIBE = 8
    IDEMPOTENT_WRITE = 12


class Pattern(IntEnum):
    LITERAL = 3
    PREFIXED = 4


_ALLOW = 3
CLUSTER = "kafka-cluster"
API = "api"  # the operators' API service's principal


@dataclass(frozen=True, order=True)
class Acl:
    """Allow ``principal`` (a SCRAM user) ``operation`` on one resource, from any host."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation

    def describe(self) -> str:
        """As ``kafka-acls --add`` would take it."""
        what = {
            Resource.TOPIC: f"--topic {self.name}",
            Resource.GROUP: f"--group {self.name}",
            Resource.CLUSTER: "--cluster",
        }[self.resource]
        pattern = " --resource-pattern-type prefixed" if self.pattern is Pattern.PREFIXED else ""
        operation = "".join(w.capitalize() for w in self.operation.name.split("_"))
        return (
            f"--add --allow-principal User:{self.principal} --operation {operation} {what}{pattern}"
        )


def principal(service: str | None, pool: str | None = None) -> str:
    """The SCRAM user a process connects as: one per role, one per executor pool;
    ``operator`` for the CLI and the stack itself (topic creation)."""
    if service is None:
        return "operator"
    return f"executor-{pool}" if service == "executor" else service


def tenant_principal(tenant: str) -> str:
    """The SCRAM user a tenant bound to its own topics connects as."""
    return f"tenant-{tenant}"


def tenant_groups(prefix: str, tenant: str) -> tuple[str, str]:
    """The consumer group a tenant may use, and the prefix (with a separator, so that
    tenant ``a`` cannot take tenant ``ab``'s groups) of any others it may name."""
    group = f"{prefix}-tenant-{tenant}"
    return group, group + "."


def _topics(address: str, topics: Topics, pools: tuple[str, ...]) -> list[str]:
    if "{pool}" in address:
        return [topics.steps(p) for p in pools]
    return [topics.prefix + address.removeprefix(TOPIC_PREFIX)]


def acls(prefix: str, pools: tuple[str, ...], tenants: tuple[str, ...] = ()) -> list[Acl]:
    """Every ACL podium's principals need under ``prefix``, executor ``pools`` and
    ``tenants`` bound to topics of their own given."""
    topics = Topics(prefix)
    out: set[Acl] = set()

    def topic(user: str, name: str, op: Operation, pattern: Pattern = Pattern.LITERAL) -> None:
        out.add(Acl(user, Resource.TOPIC, name, pattern, op))

    # service -> the principals that run it (the executor: one per pool).
    runners: dict[str, list[tuple[str, str | None]]] = {
        "router": [("router", None)],
        "memory": [("memory", "memory")],
        "recovery": [("recovery", None)],
        "executor": [(principal("executor", p), p) for p in pools],
        "api": [("api", None)],
    }
    for ch in CHANNELS:
        for service in ch.consumers:
            if service == UPSTREAM:
                continue
            for user, pool in runners[service]:
                # A pool's consumer reads only its own pool's topic.
                names = (
                    [topics.steps(pool)]
                    if "{pool}" in ch.address and pool
                    else _topics(ch.address, topics, pools)
                )
                for name in names:
                    topic(user, name, Operation.READ)
                    # The api observes others' topics and dead-letters nothing.
                    if ch.dlq and service != "api":
                        topic(user, topics.dlq(name), Operation.WRITE)
        for service in ch.producers:
            if service == UPSTREAM:
                continue
            for user, _ in runners[service]:
                if "{pool}" in ch.address:
                    topic(user, f"{prefix}.steps.", Operation.WRITE, Pattern.PREFIXED)
                else:
                    for name in _topics(ch.address, topics, pools):
                        topic(user, name, Operation.WRITE)
    # The router creates the step topics (and their DLQs) of the pools its workflows
    # name, as it does on a cluster without ACLs: a pool may be named before it runs.
    topic("router", f"{prefix}.steps.", Operation.CREATE, Pattern.PREFIXED)
    for service, users in runners.items():
        for user, pool in users:
            group = topics.group(service, pool if service == "executor" else None)
            if service == "api":
                # Its group is named per database (``<group>-<epoch>``): a new one rebuilds.
                out.add(Acl(user, Resource.GROUP, f"{group}-", Pattern.PREFIXED, Operation.READ))
            else:
                out.add(Acl(user, Resource.GROUP, group, Pattern.LITERAL, Operation.READ))
            topic(user, f"{prefix}.", Operation.DESCRIBE, Pattern.PREFIXED)
            out.add(
                Acl(user, Resource.CLUSTER, CLUSTER, Pattern.LITERAL, Operation.IDEMPOTENT_WRITE)
            )
    for tenant in tenants:
        user, ingress = tenant_principal(tenant), topics.tenant_tasks(tenant)
        events = topics.tenant_task_events(tenant)
        topic(user, ingress, Operation.WRITE)
        topic(user, events, Operation.READ)
        group, others = tenant_groups(prefix, tenant)
        out.add(Acl(user, Resource.GROUP, group, Pattern.LITERAL, Operation.READ))
        out.add(Acl(user, Resource.GROUP, others, Pattern.PREFIXED, Operation.READ))
        out.add(Acl(user, Resource.CLUSTER, CLUSTER, Pattern.LITERAL, Operation.IDEMPOTENT_WRITE))
        topic("router", ingress, Operation.READ)
        topic("router", topics.dlq(ingress), Operation.WRITE)
        topic("router", events, Operation.WRITE)
    out.update(_api(topics, pools))
    out.update(_api_pools(topics))
    op = "operator"
    topic(op, f"{prefix}.", Operation.ALL, Pattern.PREFIXED)
    out.add(Acl(op, Resource.GROUP, prefix, Pattern.PREFIXED, Operation.ALL))
    for cluster_op in (Operation.CREATE, Operation.DESCRIBE, Operation.IDEMPOTENT_WRITE):
        out.add(Acl(op, Resource.CLUSTER, CLUSTER, Pattern.LITERAL, cluster_op))
    return sorted(out)


def _api(topics: Topics, pools: tuple[str, ...]) -> list[Acl]:
    """What the operators' API (issue 17) needs beyond its channels (which give it the
    run's story and Write on tasks): Read on the dead letters, to list and show them,
    and Write on each DLQ's source topic, to replay them there. The source topics only,
    each by its literal name: a replay goes back where its record came from (or to
    another DLQ's source), and the api may not forge an event on any other topic."""
    sources = [topics.tasks, topics.task_events, topics.step_results, topics.step_failures]
    sources += [topics.steps(p) for p in dict.fromkeys(("memory", *pools))]
    out = []
    for name in sources:
        out.append(Acl(API, Resource.TOPIC, topics.dlq(name), Pattern.LITERAL, Operation.READ))
        out.append(Acl(API, Resource.TOPIC, name, Pattern.LITERAL, Operation.WRITE))
    return out


def _api_pools(topics: Topics) -> list[Acl]:
    """Describe on the groups that consume the pools' step topics (every executor
    pool's, under a prefix, and memory's): ``GET /v1/pools`` shows their members and
    committed offsets. Describe shows a group, never joins or commits for it."""
    return [
        Acl(
            API,
            Resource.GROUP,
            topics.group("executor") + "-",
            Pattern.PREFIXED,
            Operation.DESCRIBE,
        ),
        Acl(API, Resource.GROUP, topics.group("memory"), Pattern.LITERAL, Operation.DESCRIBE),
    ]


async def apply(options: dict[str, Any], entries: list[Acl]) -> None:
    """Create ``entries`` on the cluster (an existing ACL is left as it is), connecting
    with aiokafka ``options`` of a principal allowed to alter ACLs."""
    client = AIOKafkaClient(**options, client_id="podium-acls")
    await client.bootstrap()
    try:
        node = client.get_random_node()
        for acl in entries:
            request = CreateAclsRequest(
                int(acl.resource),
                acl.name,
                int(acl.pattern),
                f"User:{acl.principal}",
                "*",
                int(acl.operation),
                _ALLOW,
            )
            response = await client.send(node, request)
            for code, message in response.creation_responses:
                if code:
                    raise for_code(code)(f"creating ACL {acl.describe()}: {message}")
    finally:
        await client.close()
