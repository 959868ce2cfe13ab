"""Where one task's time goes: the stages read from a `hello` trace's spans."""

from __future__ import annotations

from podium_bench.latency_stages import STAGES, markdown, stages_of, summarise

MS = 1_000_000


def span(service: str, name: str, start_ms: float, end_ms: float) -> dict[str, object]:
    return {
        "service": service,
        "name": name,
        "trace_id": "t",
        "start_ns": int(start_ms * MS),
        "end_ns": int(end_ms * MS),
    }


def hello_trace() -> list[dict[str, object]]:
    """A `hello` as the services record it, out of order, with the task events the router
    publishes beside the step request (the earliest publish of a batch starts the hop)."""
    return [
        span("router", "process p.step-results.v1", 20, 23),
        span("executor", "executor.call", 12.5, 13),
        span("router", "publish p.task-events.v1", 6, 8),
        span("router", "process p.tasks.v1", 2, 5),
        span("router", "router.route", 3, 3.5),
        span("router", "publish p.steps.default.v1", 6.5, 8),
        span("executor", "process p.steps.default.v1", 11, 14),
        span("executor", "publish p.step-results.v1", 16, 18),
        span("router", "publish p.task-events.v1", 24, 26),
    ]


def test_each_stage_runs_from_one_span_edge_to_the_next() -> None:
    got = stages_of(hello_trace(), sent_ns=0, seen_ns=30 * MS)
    assert got is not None
    assert [got[name] for name, _ in STAGES] == [2, 3, 1, 5, 3, 2, 4, 3, 1, 6]
    assert got["the step's call"] == 0.5
    assert sum(got[name] for name, _ in STAGES) == 30  # the stages tile the whole latency


def test_a_trace_missing_a_process_span_has_no_stages() -> None:
    spans = [s for s in hello_trace() if s["service"] != "executor"]
    assert stages_of(spans, sent_ns=0, seen_ns=30 * MS) is None


def test_a_trace_whose_last_publish_is_not_yet_exported_has_no_stages() -> None:
    spans = [s for s in hello_trace() if s["start_ns"] != 24 * MS]
    assert stages_of(spans, sent_ns=0, seen_ns=30 * MS) is None


def test_summary_takes_each_stage_median_and_sums_them_by_kind() -> None:
    one = stages_of(hello_trace(), 0, 30 * MS)
    assert one is not None
    slower = {k: v * 2 for k, v in one.items()}
    s = summarise([one, slower, slower], [30.0, 60.0, 60.0])
    assert s["tasks"] == 3
    assert s["total_p50_ms"] == 60.0
    assert s["by_kind_ms"] == {"hop": 34.0, "handling": 18.0, "relay": 8.0}
    text = markdown(s, raw_hop_p50_ms=1.5)
    assert "four raw hops of this run: 6.0 ms" in text
    assert "| router → client | hop | 12.00 ms | 20% |" in text


def test_no_spans_is_reported_as_not_measured() -> None:
    assert "not measured" in markdown({"unavailable": "tracing off"}, 1.0)
