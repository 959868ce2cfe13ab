"""`podium bench`: podium beside Temporal, every figure beside a baseline of the
same run. A workspace package of its own, so `make run` does not install the
peers and tools it needs (Temporal's SDK and binary, matplotlib, psutil, py-spy).

One module per section of the report, run in this order by ``run``:

- ``baselines``: the raw produce→consume hop on the stack's broker; one SQLite commit.
- ``podium_side``: open-loop latency (``hello``, ``chain3``), closed-loop throughput
  and a py-spy profile (``profiling``) through the whole stack.
- ``temporal_side``: the same runs against Temporal's dev server (``temporal``: its
  workflows, server and worker processes).
- ``scaling``: I/O-bound ``sleep`` steps on 1/2/4 executors (``executor``), E(n).
- ``recovery``: kill -9 one of two executors, beside the broker's own failover
  (``failover``).
- ``tracing``: throughput with tracing off and on.
- ``memory`` and ``recovery_service``: those services' own sections.
- ``machine`` and ``targets``: the facts and the goals; ``report`` and ``plots``
  write results.json, the Markdown and the PNGs.

Shared by all: ``options`` (what a run measures), ``drivers`` (the load, the same for
both systems), ``processes`` (CPU and peak RSS of the system under test), ``scratch``
(a section's own home, topic prefix and broker), ``stats``.

The entry point is ``podium_bench.run.run_peer_bench`` (``podium bench`` calls it);
``python -m podium_bench render`` rewrites a report from its results.json.
"""

# Nothing is imported here: the Temporal workers and the failover member run as
# `python -m podium_bench.temporal` / `.failover` and import this package first, and
# their start-up and peak RSS (a figure of the report) must be theirs alone.
