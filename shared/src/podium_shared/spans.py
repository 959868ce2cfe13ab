"""Reading the local span store: the JSON lines the services write under
``PODIUM_HOME/spans`` (``PODIUM_TRACING=local``, see ``podium_shared.telemetry``).

A task's trace is every span sharing a trace id with a span whose ``podium.task_id``
is the task. Read by ``podium trace`` and by the api's ``/v1/runs/{id}/trace``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

TASK_ATTR = "podium.task_id"


def _spans(home: Path, needle: bytes | None = None) -> Iterator[dict[str, Any]]:
    """The spans of the files under ``home/spans`` (a torn last line is skipped); with
    ``needle``, only those of lines that hold it (a cheap test before parsing)."""
    for path in sorted((home / "spans").glob("*.jsonl")):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a file removed while it was listed
            continue
        for line in data.splitlines():
            if needle is not None and needle not in line:
                continue
            try:
                span = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(span, dict) and span.get("trace_id") and span.get("start_ns"):
                yield span


def load_spans(home: Path) -> list[dict[str, Any]]:
    """Every span in the files under ``home/spans`` (a torn last line is skipped)."""
    return list(_spans(home))


def trace_ids_of(spans: list[dict[str, Any]], task_id: str) -> list[str]:
    """The trace ids holding a span of this task, earliest first."""
    first: dict[str, int] = {}
    for s in spans:
        if (s.get("attributes") or {}).get(TASK_ATTR) == task_id:
            first[s["trace_id"]] = min(first.get(s["trace_id"], s["start_ns"]), s["start_ns"])
    return sorted(first, key=first.__getitem__)


def task_spans(home: Path, task_id: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The task's trace ids (earliest first) and every span of those traces, read
    without parsing the lines that cannot be of them."""
    needle = orjson.dumps(task_id)  # as the task id is written inside a span's line
    ids = trace_ids_of(list(_spans(home, needle)), task_id)
    if not ids:
        return [], []
    spans = [
        s for trace_id in ids for s in _spans(home, trace_id.encode()) if s["trace_id"] == trace_id
    ]
    return ids, spans
