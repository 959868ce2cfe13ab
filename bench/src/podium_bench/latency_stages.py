"""Where one `hello` task's time goes: its spans, one task in flight, stage by stage.

Issue 18 asks why one task alone takes several times four raw broker hops. The services'
spans answer it: each task is one trace (``podium_shared.telemetry``), and the bench's
client notes when it sent the task and when it saw the outcome, on the same wall clock.
Between those two instants a `hello` passes ten stages, always in this order::

    client ─hop─▶ router handles ─relay─▶ publish ─hop─▶ executor handles ─relay─▶ publish
           ─hop─▶ router handles ─relay─▶ publish ─hop─▶ client

A hop runs from a publish span's start (the relay took the outbox row) to the start of the
consumer's process span: the producer's send and acknowledgement, the broker, the
consumer's fetch, decoding and the inbox check. A relay stage runs from the end of a
process span (its transaction committed) to the first publish span of what it wrote: the
outbox relay waking and reading its rows. The first hop starts at the client's send.

``stages_of`` is a plain function of the spans (tested without a broker); ``measure``
drives the tasks and reads the stack's local span files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from podium.client import PodiumClient
from podium_bench.drivers import bench_task, podium_call, run_task, warm
from podium_bench.stats import median
from podium_shared.spans import TASK_ATTR, load_spans

Kind = Literal["hop", "handling", "relay"]

# (name, kind), in the order a `hello` passes them.
STAGES: tuple[tuple[str, Kind], ...] = (
    ("client → router", "hop"),
    ("router handles the task", "handling"),
    ("router's relay picks up the step request", "relay"),
    ("router → executor", "hop"),
    ("executor runs the step (the call included)", "handling"),
    ("executor's relay picks up the result", "relay"),
    ("executor → router", "hop"),
    ("router handles the result", "handling"),
    ("router's relay picks up the outcome", "relay"),
    ("router → client", "hop"),
)

Span = dict[str, Any]


def _first(spans: Sequence[Span], service: str, prefix: str, suffix: str) -> Span | None:
    found = [
        s
        for s in spans
        if s.get("service") == service
        and s["name"].startswith(prefix)
        and s["name"].endswith(suffix)
    ]
    return min(found, key=lambda s: s["start_ns"]) if found else None


def _first_publish_after(spans: Sequence[Span], service: str, after_ns: int) -> Span | None:
    later = [
        s
        for s in spans
        if s.get("service") == service
        and s["name"].startswith("publish ")
        and s["start_ns"] >= after_ns
    ]
    return min(later, key=lambda s: s["start_ns"]) if later else None


def stages_of(spans: Sequence[Span], sent_ns: int, seen_ns: int) -> dict[str, float] | None:
    """Each stage's duration in ms for one `hello` task whose trace holds ``spans``, sent
    by the client at ``sent_ns`` and seen done at ``seen_ns`` (wall clock, ns); also
    ``"the step's call"``. None when a span is missing (tracing off, or not yet exported)."""
    r1 = _first(spans, "router", "process ", ".tasks.v1")
    ex = _first(spans, "executor", "process ", ".v1")
    r2 = _first(spans, "router", "process ", ".step-results.v1")
    call = _first(spans, "executor", "executor.call", "")
    if r1 is None or ex is None or r2 is None:
        return None
    p1 = _first_publish_after(spans, "router", r1["end_ns"])
    p2 = _first_publish_after(spans, "executor", ex["end_ns"])
    p3 = _first_publish_after(spans, "router", r2["end_ns"])
    if p1 is None or p2 is None or p3 is None:
        return None
    points = (
        sent_ns,
        r1["start_ns"],
        r1["end_ns"],
        p1["start_ns"],
        ex["start_ns"],
        ex["end_ns"],
        p2["start_ns"],
        r2["start_ns"],
        r2["end_ns"],
        p3["start_ns"],
        seen_ns,
    )
    out = {name: (points[i + 1] - points[i]) / 1e6 for i, (name, _) in enumerate(STAGES)}
    out["the step's call"] = (call["end_ns"] - call["start_ns"]) / 1e6 if call else 0.0
    return out


def summarise(per_task: Sequence[dict[str, float]], totals_ms: Sequence[float]) -> dict[str, Any]:
    """The median of each stage over the tasks, and the sums by kind of those medians."""
    p50 = {name: median([t[name] for t in per_task]) for name, _ in STAGES}
    stages = [{"name": name, "kind": kind, "p50_ms": p50[name]} for name, kind in STAGES]
    by_kind = {
        kind: sum(p50[name] for name, k in STAGES if k == kind)
        for kind in ("hop", "handling", "relay")
    }
    return {
        "tasks": len(per_task),
        "total_p50_ms": median(list(totals_ms)),
        "stages": stages,
        "by_kind_ms": by_kind,
        "call_p50_ms": median([t["the step's call"] for t in per_task]),
    }


def _traces_by_task(spans: Sequence[Span], task_ids: set[str]) -> dict[str, list[Span]]:
    """Each task's spans: every span of the traces that hold a span naming the task."""
    trace_of: dict[str, str] = {}
    for s in spans:
        task = (s.get("attributes") or {}).get(TASK_ATTR)
        if task in task_ids:
            trace_of.setdefault(s["trace_id"], task)
    out: dict[str, list[Span]] = {t: [] for t in task_ids}
    for s in spans:
        task = trace_of.get(s["trace_id"])
        if task is not None:
            out[task].append(s)
    return out


async def _one_at_a_time(client: PodiumClient, count: int) -> dict[str, tuple[int, int]]:
    """Send ``count`` `hello` tasks, each after the last one's outcome; their wall times."""
    marks: dict[str, tuple[int, int]] = {}
    for i in range(count):
        task = bench_task("hello", i)
        sent = time.time_ns()
        await run_task(client, task)
        marks[task.task_id] = (sent, time.time_ns())
    return marks


async def measure(
    client: PodiumClient,
    home: Path,
    count: int,
    warmup: int,
    advance: Callable[[str], None],
    *,
    export_wait_s: float = 1.5,
) -> dict[str, Any]:
    """``count`` `hello` tasks one at a time through the running stack whose
    ``PODIUM_HOME`` is ``home`` (local tracing), and their stages."""
    advance(f"podium: where one task's time goes ({count} tasks, one at a time)")
    await warm(podium_call(client, "hello"), warmup)
    marks = await _one_at_a_time(client, count)
    await asyncio.sleep(export_wait_s)  # the services export spans every 200 ms
    traces = _traces_by_task(load_spans(home), set(marks))
    per_task, totals = [], []
    for task_id, (sent, seen) in marks.items():
        stages = stages_of(traces[task_id], sent, seen)
        if stages is not None:
            per_task.append(stages)
            totals.append((seen - sent) / 1e6)
    if not per_task:
        return {"unavailable": "no task's spans were found (is PODIUM_TRACING off?)"}
    return summarise(per_task, totals)


def markdown(s: dict[str, Any], raw_hop_p50_ms: float) -> str:
    """The stage table and the sums by kind, beside four raw hops of the same run."""
    if "unavailable" in s:
        return f"Where one task's time goes: not measured ({s['unavailable']}).\n"
    total = s["total_p50_ms"]
    rows = [
        "| stage | kind | p50 | share of the total p50 |",
        "|---|---|---|---|",
    ]
    for st in s["stages"]:
        rows.append(
            f"| {st['name']} | {st['kind']} | {st['p50_ms']:.2f} ms | {st['p50_ms'] / total:.0%} |"
        )
    k = s["by_kind_ms"]
    return (
        f"**Where one task's time goes.** {s['tasks']} `hello` tasks one at a time (each sent "
        "when the last one's outcome arrived) after the runs above, read from the services' "
        "spans and the client's clock (`podium_bench.latency_stages`): a hop runs from a publish "
        "span's start to the consumer's process span (send, acknowledgement, broker, fetch, "
        "decode, inbox check); a relay stage from a transaction's end to the first publish "
        f"of what it wrote. Total p50 {total:.1f} ms; the stages' medians sum to "
        f"{sum(k.values()):.1f} ms: hops {k['hop']:.1f} ms (four raw hops of this run: "
        f"{4 * raw_hop_p50_ms:.1f} ms), handling {k['handling']:.1f} ms (of which the step's "
        f"call {s['call_p50_ms']:.2f} ms), relay pick-ups {k['relay']:.1f} ms.\n\n"
        + "\n".join(rows)
        + "\n"
    )
