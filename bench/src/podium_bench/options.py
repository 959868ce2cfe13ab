"""What one `podium bench` run measures and how much: every count and duration,
and the tiny ones of `--quick`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class PeerOptions:
    repeat: int = 3
    rate_per_s: float = 20.0  # open-loop arrival rate for the latency figures
    latency_s: float = 10.0
    warmup: int = 20
    stage_tasks: int = 100  # podium_bench.latency_stages: `hello` tasks one at a time
    throughput_s: float = 10.0
    in_flight: int = 64  # tasks outstanding in the throughput run, both systems
    raw_samples: int = 300
    idle_s: float = 30.0  # podium_bench.idle: the window an idle stack's CPU is read over
    idle_settle_s: float = 5.0  # after start-up, before that window
    sqlite_commits: int = 500
    scaling_seconds: float = 4.0
    scaling_concurrency: int = 8
    single_concurrency: int = 64
    replicas: tuple[int, ...] = (1, 2, 4)
    sleep_s: float = 0.1
    # podium_bench.stack_scaling: n routers and n executors, `hello` at in_flight.
    stack_replicas: tuple[int, ...] = (1, 2, 4)
    recovery_tasks: int = 32
    recovery_hold_s: float = 1.0
    recovery_records: int = 10_000  # podium_bench.recovery_service: dead letters replayed
    recovery_samples: int = 50  # podium_bench.recovery_service: fatal failures timed
    memory_entries: int = 100_000
    memory_recalls: int = 1_000
    memory_remembers: int = 5_000
    api: bool = True  # podium_bench.api: the api service's reads and projection (issue 17)
    api_runs: int = 100_000
    api_big_runs: int = 100  # runs of api_steps steps (the others have two)
    api_steps: int = 50
    api_requests: int = 1_000  # per case, after api_warmup rounds
    api_warmup: int = 50
    api_postgres: bool = True  # the reads and the projection on PostgreSQL too
    api_lag_every_s: float = 0.5
    # podium_bench.stack_postgres: the whole stack again with every service on PostgreSQL.
    postgres: bool = True
    temporal: bool = True
    # The durable-execution peers that run (podium_bench.peers.PEERS; `--peers`).
    peers: tuple[str, ...] = ("temporal", "restate", "dbos")
    profile: bool = True
    output: Path | None = Path("docs/benchmarks.md")
    out_dir: Path = Path("docs/bench")

    @classmethod
    def quick(cls) -> PeerOptions:
        """Tiny counts: a smoke run that exercises every path in a couple of minutes."""
        return cls(
            repeat=1,
            rate_per_s=10.0,
            latency_s=1.0,
            warmup=3,
            stage_tasks=5,
            throughput_s=1.5,
            in_flight=8,
            raw_samples=30,
            idle_s=3.0,
            idle_settle_s=3.0,
            sqlite_commits=30,
            scaling_seconds=0.5,
            single_concurrency=8,
            replicas=(1, 2),
            stack_replicas=(1, 2),
            recovery_tasks=6,
            recovery_hold_s=0.5,
            recovery_records=200,
            recovery_samples=5,
            memory_entries=300,
            memory_recalls=20,
            memory_remembers=20,
            api_runs=2_000,
            api_big_runs=5,
            api_requests=30,
            api_warmup=3,
            profile=False,
        )
