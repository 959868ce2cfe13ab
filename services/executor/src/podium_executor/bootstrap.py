"""The executor's composition root: one pool per process."""

from __future__ import annotations

import httpx

from podium_executor.breaker import Breakers
from podium_executor.capabilities import Capability, Resources, discover
from podium_executor.egress import EgressPolicy, cluster_endpoints, guarded_client, parse_allow
from podium_executor.handlers import make_handler
from podium_executor.ledger import Ledger
from podium_executor.migrations import HISTORY
from podium_executor.ratelimit import PoolRateLimit
from podium_executor.service import Executor
from podium_executor.settings import ExecutorSettings
from podium_executor.status import replica_name, status_report, status_reporter
from podium_shared import ServiceSpec, Settings, Topics, secrets
from podium_shared.migrations import open_database
from podium_shared.startup import read_settings


def build(
    settings: Settings,
    executor_settings: ExecutorSettings | None = None,
    capabilities: dict[str, Capability] | None = None,
    http: httpx.AsyncClient | None = None,
) -> ServiceSpec:
    """Build one replica of the pool ``executor_settings.pool`` (the executor's
    settings decide the pool; the database is that pool's)."""
    xs = executor_settings or read_settings(ExecutorSettings)
    # The provider's key: masked in whatever this process reports (docs/security.md).
    secrets.register_settings(xs)
    if xs.pool != settings.pool:
        settings = settings.model_copy(update={"pool": xs.pool})
    if xs.drills and xs.drills_root is None:
        xs = xs.model_copy(update={"drills_root": settings.home})
    topics = Topics(settings.topic_prefix)
    engine = open_database(settings.database_url("executor"), HISTORY)
    # Tools reach what the egress policy allows; the LLM provider is the operator's
    # own setting, outside the policy (docs/security.md). A client passed in serves both.
    provider_http = http or httpx.AsyncClient(follow_redirects=False)
    http = http or guarded_client(
        EgressPolicy(
            allow=parse_allow(xs.egress_allow),
            cluster=cluster_endpoints(
                settings.kafka_bootstrap,
                [settings.database_url(s) for s in ("router", "executor", "memory", "recovery")],
            ),
        )
    )
    breakers = Breakers(xs.breaker_failures, xs.breaker_cooldown_s)
    instance = f"executor-{xs.pool}"
    replica = replica_name(instance)
    executor = Executor(
        capabilities if capabilities is not None else discover(Resources(xs, http, provider_http)),
        topics,
        ledger=Ledger(engine),
        breakers=breakers,
        rate_limit=(
            PoolRateLimit(engine, xs.pool, xs.rate_limit_per_s, xs.rate_limit_burst)
            if xs.rate_limit_per_s
            else None
        ),
        default_timeout_s=xs.default_timeout_s,
    )
    return ServiceSpec(
        name="executor",
        group=topics.group("executor", xs.pool),
        topics=[topics.steps(xs.pool)],
        handler=make_handler(executor),
        engine=engine,
        pools=tuple(sorted({"default", "memory", xs.pool})),
        concurrency=xs.concurrency,
        grace_s=xs.shutdown_grace_s,
        # Replicas of a pool share its database, on SQLite too (`podium up --executors N`).
        claim_outbox=True,
        outbox_lease_s=xs.outbox_lease_s,
        instance=instance,
        background=[
            status_reporter(
                engine,
                topics,
                lambda now: status_report(
                    pool=xs.pool,
                    replica=replica,
                    concurrency=xs.concurrency,
                    breakers=breakers,
                    rate_per_s=xs.rate_limit_per_s,
                    burst=xs.rate_limit_burst,
                    interval_s=xs.status_interval_s,
                    now=now,
                ),
                xs.status_interval_s,
            )
        ],
        details={
            "pool": xs.pool,
            "concurrency": xs.concurrency,
            "capabilities": sorted(executor.capabilities),
        },
        closers=[c.aclose for c in {id(c): c for c in (http, provider_http)}.values()],
    )
