"""`podium trace TASK_ID`: the cross-service tree of one task, drawn from the spans
the api answers (``GET /v1/runs/{id}/trace``: its span store or the OTLP backend).

A task's trace is every span sharing a trace id with a span whose
``podium.task_id`` is the task; the tree follows parent ids, and spans whose
parent is not among them (an upstream producer's) are roots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

BAR_WIDTH = 40
SERVICE_STYLES = {
    "router": "cyan",
    "executor": "green",
    "memory": "magenta",
    "recovery": "yellow",
}


@dataclass
class SpanNode:
    raw: dict[str, Any]
    children: list[SpanNode] = field(default_factory=list)

    @property
    def start(self) -> int:
        return int(self.raw["start_ns"])

    @property
    def end(self) -> int:
        return int(self.raw.get("end_ns") or self.raw["start_ns"])


def build_tree(spans: list[dict[str, Any]]) -> list[SpanNode]:
    """The roots of one trace's spans, children in start order."""
    nodes = {s["span_id"]: SpanNode(s) for s in spans}
    roots: list[SpanNode] = []
    for node in nodes.values():
        parent = nodes.get(node.raw.get("parent_span_id") or "")
        (parent.children if parent else roots).append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.start)
    return sorted(roots, key=lambda n: n.start)


def _walk(nodes: list[SpanNode], depth: int = 0) -> list[tuple[int, SpanNode]]:
    out = []
    for n in nodes:
        out.append((depth, n))
        out += _walk(n.children, depth + 1)
    return out


def shape(task_id: str, ids: list[str], spans: list[dict[str, Any]]) -> dict[str, Any]:
    """The traces ``ids`` of ``spans`` (in the span files' shape) as `podium trace` has
    them: each a tree with depths, offsets and durations."""
    traces = []
    for trace_id in ids:
        mine = [s for s in spans if s["trace_id"] == trace_id]
        if not mine:
            continue
        rows = _walk(build_tree(mine))
        t0 = min(n.start for _, n in rows)
        t1 = max(n.end for _, n in rows)
        traces.append(
            {
                "trace_id": trace_id,
                "duration_ms": (t1 - t0) / 1e6,
                "services": sorted({n.raw.get("service", "") for _, n in rows}),
                "upstream_parent": next(
                    (
                        n.raw["parent_span_id"]
                        for d, n in rows
                        if d == 0 and n.raw.get("parent_span_id")
                    ),
                    None,
                ),
                "spans": [
                    {
                        "span_id": n.raw["span_id"],
                        "parent_span_id": n.raw.get("parent_span_id"),
                        "depth": depth,
                        "name": n.raw["name"],
                        "service": n.raw.get("service", ""),
                        "kind": n.raw.get("kind"),
                        "status": n.raw.get("status"),
                        "offset_ms": (n.start - t0) / 1e6,
                        "duration_ms": (n.end - n.start) / 1e6,
                        "attributes": n.raw.get("attributes") or {},
                        "events": [e.get("name") for e in n.raw.get("events") or []],
                    }
                    for depth, n in rows
                ],
            }
        )
    return {"task_id": task_id, "traces": traces}


def _bar(offset_ms: float, duration_ms: float, total_ms: float, style: str) -> Text:
    total = total_ms or 1.0
    start = min(int(offset_ms / total * BAR_WIDTH), BAR_WIDTH - 1)
    length = max(1, round(duration_ms / total * BAR_WIDTH))
    length = min(length, BAR_WIDTH - start)
    return Text(" " * start) + Text("█" * length, style=style)


def _detail(span: dict[str, Any]) -> str:
    a = span["attributes"]
    keys = (
        "podium.step_id",
        "podium.route.pool",
        "podium.route.model",
        "podium.capability",
        "podium.attempt",
        "podium.memory.hits",
        "error.type",
    )
    parts = [f"{k.rsplit('.', 1)[-1]}={a[k]}" for k in keys if a.get(k) not in (None, "")]
    parts += [e for e in span["events"] if e]
    return " ".join(parts)


def render(data: dict[str, Any], console: Console) -> None:
    """Draw each trace as a tree with a waterfall of durations."""
    for t in data["traces"]:
        console.print(
            f"trace {t['trace_id']}  {t['duration_ms']:.1f} ms  "
            f"services: {', '.join(t['services'])}"
            + (f"  (upstream parent {t['upstream_parent']})" if t["upstream_parent"] else "")
        )
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        table.add_column("span", no_wrap=True)
        table.add_column("service")
        table.add_column("ms", justify="right")
        table.add_column("waterfall", no_wrap=True, width=BAR_WIDTH)
        table.add_column("detail", overflow="fold")
        for s in t["spans"]:
            style = SERVICE_STYLES.get(s["service"], "white")
            if s["status"] == "ERROR":
                style = "red"
            name = Text("  " * s["depth"] + ("└ " if s["depth"] else "") + s["name"])
            table.add_row(
                name,
                Text(s["service"], style=SERVICE_STYLES.get(s["service"], "white")),
                f"{s['duration_ms']:.2f}",
                _bar(s["offset_ms"], s["duration_ms"], t["duration_ms"], style),
                _detail(s),
            )
        console.print(table)
