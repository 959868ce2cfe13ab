"""A run's trace: the spans of every service that worked on it, from the local span
store (the files the services write under ``PODIUM_HOME/spans``) or, when
``PODIUM_API_TRACE_URL`` names one, from a Jaeger-compatible query API (Jaeger's own,
or any OTLP backend that answers its ``/api/traces``).

Both give the same shape (``span_view``): the HTTP layer neither knows nor cares
which one answered, beyond saying so in ``source``."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from podium_shared.spans import TASK_ATTR, task_spans

# The service whose spans name every task (router.route carries podium.task_id): a
# Jaeger search needs a service, and the router's spans find every trace of a task.
SEARCH_SERVICE = "router"


class TraceUnavailable(RuntimeError):
    """The trace backend did not answer (or answered what is not a trace)."""


@dataclass(frozen=True, slots=True)
class Trace:
    trace_ids: list[str]
    spans: list[dict[str, Any]]
    source: str  # local | otlp


class TraceSource(Protocol):
    def trace(self, task_id: str, since: float | None) -> Trace:
        """The task's traces; ``since``: when the run began (epoch seconds), if known."""
        ...


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


def span_view(
    *,
    trace_id: str,
    span_id: str,
    parent_id: str | None,
    name: str,
    service: str,
    start_ns: int,
    end_ns: int | None,
    status: str | None,
    attributes: dict[str, Any],
) -> dict[str, Any]:
    """One span as the API shows it: times in ISO 8601 UTC and its duration."""
    end = end_ns if end_ns is not None and end_ns >= start_ns else start_ns
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": parent_id,
        "name": name,
        "service": service,
        "start": _iso(start_ns),
        "end": _iso(end),
        "duration_ms": (end - start_ns) / 1e6,
        "status": status or "UNSET",
        "attributes": attributes,
    }


def _ordered(spans: list[dict[str, Any]], trace_ids: list[str]) -> list[dict[str, Any]]:
    """Spans trace by trace (in ``trace_ids``' order), each trace by start time."""
    rank = {t: i for i, t in enumerate(trace_ids)}
    return sorted(
        spans,
        key=lambda s: (rank.get(s["trace_id"], len(rank)), datetime.fromisoformat(s["start"])),
    )


def local_span(raw: dict[str, Any]) -> dict[str, Any]:
    """A span of the local store (``telemetry.span_dict``) as the API shows it."""
    end = raw.get("end_ns")
    return span_view(
        trace_id=raw["trace_id"],
        span_id=raw["span_id"],
        parent_id=raw.get("parent_span_id"),
        name=raw.get("name", ""),
        service=raw.get("service", ""),
        start_ns=int(raw["start_ns"]),
        end_ns=None if end is None else int(end),
        status=raw.get("status"),
        attributes=raw.get("attributes") or {},
    )


@dataclass(frozen=True, slots=True)
class LocalTraces:
    """The span files under ``home/spans`` (``PODIUM_TRACING=local``)."""

    home: Path

    def trace(self, task_id: str, since: float | None) -> Trace:
        ids, raw = task_spans(self.home, task_id)
        rank = {t: i for i, t in enumerate(ids)}
        # Ordered on the nanoseconds the files hold (the views keep microseconds).
        raw.sort(key=lambda s: (rank[s["trace_id"]], int(s["start_ns"])))
        return Trace(ids, [local_span(s) for s in raw], "local")


_JAEGER_STATUS = {"ok": "OK", "error": "ERROR", "unset": "UNSET"}


def jaeger_spans(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The spans of one trace of Jaeger's query API (``data[i]`` of ``/api/traces``):
    times in microseconds, the parent a CHILD_OF reference, the service the process's."""
    processes = trace.get("processes") or {}
    out = []
    for s in trace.get("spans") or []:
        tags = {t["key"]: t.get("value") for t in s.get("tags") or [] if "key" in t}
        parent = next(
            (
                r.get("spanID")
                for r in s.get("references") or []
                if r.get("refType") == "CHILD_OF" and r.get("traceID", s["traceID"]) == s["traceID"]
            ),
            None,
        )
        status = str(tags.pop("otel.status_code", "")).lower()
        if tags.get("error") is True and not status:
            status = "error"
        start_us, duration_us = int(s.get("startTime", 0)), int(s.get("duration", 0))
        process = processes.get(s.get("processID"), {})
        out.append(
            span_view(
                trace_id=s["traceID"],
                span_id=s["spanID"],
                parent_id=parent,
                name=s.get("operationName", ""),
                service=process.get("serviceName", ""),
                start_ns=start_us * 1000,
                end_ns=(start_us + duration_us) * 1000,
                status=_JAEGER_STATUS.get(status, "UNSET"),
                attributes=tags,
            )
        )
    return out


def _trace_start(trace: dict[str, Any]) -> int:
    return min((int(s.get("startTime", 0)) for s in trace.get("spans") or []), default=0)


@dataclass(slots=True)
class JaegerTraces:
    """A Jaeger-compatible query API at ``url``: the traces holding a span tagged with
    the task (``/api/traces?service=router&tags=...``), each read whole
    (``/api/traces/{id}``)."""

    url: str
    timeout_s: float = 10.0
    lookback_s: float = 3600.0  # without the run's start: how far back to search
    limit: int = 20
    headers: dict[str, str] = field(default_factory=dict)

    def _get(self, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        url = self.url.rstrip("/") + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json", **self.headers}
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                body = orjson.loads(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise TraceUnavailable(f"the trace backend answered {exc.code}") from exc
        except (OSError, orjson.JSONDecodeError) as exc:
            raise TraceUnavailable(f"the trace backend did not answer: {exc}") from exc
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise TraceUnavailable("the trace backend answered no traces")
        return [t for t in data if isinstance(t, dict)]

    def trace(self, task_id: str, since: float | None) -> Trace:
        now_us = int(datetime.now(UTC).timestamp() * 1e6)
        start_us = int(since * 1e6) - 60_000_000 if since else now_us - int(self.lookback_s * 1e6)
        found = self._get(
            "/api/traces",
            {
                "service": SEARCH_SERVICE,
                "tags": orjson.dumps({TASK_ATTR: task_id}).decode(),
                "start": str(start_us),
                "end": str(now_us),
                "limit": str(self.limit),
            },
        )
        ids = [
            t["traceID"]
            for t in sorted(found, key=_trace_start)
            if isinstance(t.get("traceID"), str)
        ]
        ids = list(dict.fromkeys(ids))
        spans: list[dict[str, Any]] = []
        for trace_id in ids:
            for whole in self._get(f"/api/traces/{urllib.parse.quote(trace_id, safe='')}"):
                spans += jaeger_spans(whole)
        return Trace(ids, _ordered(spans, ids), "otlp")


def trace_source(home: Path, url: str | None) -> TraceSource:
    """Jaeger's query API at ``url`` when one is configured, else the local store."""
    return JaegerTraces(url) if url else LocalTraces(home)
