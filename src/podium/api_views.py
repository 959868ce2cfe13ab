"""The api's answers in the shapes `podium status`, `history`, `trace` and `dlq` have
always printed (their --json and their lines), so scripts and docs keep holding:
plain functions from the API's JSON to the CLI's.

The words differ in one place: a run the router has accepted and not finished is
``accepted`` to the api and ``running`` to the CLI (as it was in the router's table).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

CLI_STATUSES = ("running", "completed", "failed", "cancelled")
_TO_API = {"running": "accepted"}
_FROM_API = {v: k for k, v in _TO_API.items()}


def api_status(cli_status: str | None) -> str | None:
    """The api's word for a CLI --status."""
    return None if cli_status is None else _TO_API.get(cli_status, cli_status)


def cli_status(status: str) -> str:
    """The CLI's word for an api run status."""
    return _FROM_API.get(status, status)


def iso(at: str | None) -> str | None:
    """A time as the CLI printed it, ``+00:00`` rather than the api's ``Z``."""
    return at[:-1] + "+00:00" if at and at.endswith("Z") else at


def usage(u: dict[str, Any] | None) -> dict[str, Any]:
    """``{"cost_usd", "tokens"}`` from the api's usage (either naming of the tokens)."""
    u = u or {}
    tokens = (u.get("tokens_in") or u.get("prompt_tokens") or 0) + (
        u.get("tokens_out") or u.get("completion_tokens") or 0
    )
    return {"cost_usd": float(u.get("cost_usd") or 0.0), "tokens": int(tokens)}


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """One row of `podium status` (a list)."""
    return {
        "task_id": run["task_id"],
        "workflow": run.get("workflow"),
        "workflow_version": run.get("workflow_version"),
        "status": cli_status(run["status"]),
        "tenant": run.get("tenant"),
        "accepted_at": iso(run.get("accepted_at")),
        "finished_at": iso(run.get("finished_at")),
        "usage": usage(run.get("usage")),
    }


def run_detail(run: dict[str, Any]) -> dict[str, Any]:
    """`podium status TASK_ID`: the summary, the outcome and the steps."""
    return {
        **run_summary(run),
        "output": run.get("output"),
        "error": run.get("error"),
        "input": run.get("input"),
        "dlq": run.get("dlq"),
        "steps": [
            {
                "step_id": s["step_id"],
                "capability": s.get("capability"),
                "pool": s.get("pool"),
                "model": s.get("model"),
                "status": s["status"],
                "attempts": s.get("attempts"),
                "duration_ms": s.get("duration_ms"),
                "depends_on": s.get("depends_on", []),
            }
            for s in run.get("steps") or []
        ],
    }


def status_line(info: dict[str, Any]) -> str:
    """`podium status TASK_ID` as text."""
    steps = "; ".join(
        f"{s['step_id']} {s['status']} ({s['capability']}@{s['pool']}, attempts {s['attempts']})"
        for s in info["steps"]
    )
    return (
        f"{info['task_id']} {info['status']} workflow {info['workflow']}"
        f" v{info['workflow_version']}" + (f": {steps}" if steps else "")
    )


def list_lines(rows: list[dict[str, Any]]) -> str:
    """`podium status` (a list) as text."""
    return (
        "\n".join(
            f"{r['task_id']}\t{r['status']}\t{r['workflow']} v{r['workflow_version']}"
            f"\t{r['accepted_at']}"
            for r in rows
        )
        or "no tasks"
    )


def history_view(run: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """`podium history`: the run, its entries as the router's history rows, and what next."""
    info = run_detail(run)
    events = []
    for e in found.get("entries") or []:
        d = e.get("detail") or {}
        events.append(
            {
                "at": iso(e.get("at")),
                "event": e.get("kind"),
                "step_id": e.get("step"),
                "attempt": d.get("attempt"),
                "pool": d.get("pool"),
                "capability": d.get("capability"),
                "model": d.get("model"),
                "workflow_version": d.get("workflow_version"),
                "cause": e.get("cause"),
                "next": e.get("next_action"),
            }
        )
    return {**info, "history": events, "next": what_next(info, events)}


def what_next(info: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """What happens next, as the newest entry says (or that it is over)."""
    last = events[-1]["next"] if events and events[-1]["next"] else None
    if info["status"] in ("running", "submitted"):
        return last or "dispatching the next steps"
    return last or "nothing: it is over"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(at: str | None) -> int:
    if not at:
        return 0
    t = datetime.fromisoformat(at.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000  # exact: no float seconds


def trace_spans(found: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The api's trace as (trace ids, spans in the span files' own shape), for
    ``podium.trace.shape``."""
    spans = []
    for s in found.get("spans") or []:
        start = _ns(s.get("start"))
        end = _ns(s.get("end")) or start + int((s.get("duration_ms") or 0) * 1e6)
        spans.append(
            {
                "trace_id": s["trace_id"],
                "span_id": s["span_id"],
                "parent_span_id": s.get("parent_id"),
                "name": s.get("name", ""),
                "service": s.get("service", ""),
                "status": s.get("status"),
                "start_ns": start,
                "end_ns": end,
                "attributes": s.get("attributes") or {},
                "events": s.get("events") or [],
            }
        )
    ids = list(found.get("trace_ids") or dict.fromkeys(s["trace_id"] for s in spans))
    return ids, spans


def dlq_record(topic: str, r: dict[str, Any]) -> dict[str, Any]:
    """A record of `podium dlq show`, from the api's (its podium-dlq-* headers read)."""
    h = r.get("headers") or {}
    out: dict[str, Any] = {
        "id": r["id"],
        "topic": topic,
        "partition": r.get("partition"),
        "offset": r.get("offset"),
        "time": iso(r.get("time")),
        "reason": r.get("reason") or h.get("podium-dlq-reason"),
        "error_type": r.get("error_type") or h.get("podium-dlq-error-type"),
        "error_class": h.get("podium-dlq-error-class"),
        "error_message": h.get("podium-dlq-error-message"),
        "attempts": h.get("podium-dlq-attempts"),
        "original_topic": h.get("podium-dlq-original-topic"),
        "task_id": r.get("task_id"),
        "step_id": h.get("podium-dlq-step-id"),
        "key": r.get("key"),
        "headers": h,
        "payload": r.get("value"),
    }
    if r.get("value") is None and r.get("value_text") is not None:
        out["value"] = r["value_text"]
    return out


def replay_view(report: dict[str, Any]) -> dict[str, Any]:
    """The api's replay report in the CLI's --json shape (counts, then the records)."""
    replayed, skipped = report.get("replayed", []), report.get("skipped", [])
    if isinstance(replayed, int):  # already the CLI's shape
        return report
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s.get("why", "?")] = reasons.get(s.get("why", "?"), 0) + 1
    seconds = float(report.get("seconds") or 0.0)
    return {
        "topic": report["topic"],
        "selected": report.get("selected", len(replayed) + len(skipped)),
        "dry_run": report.get("dry_run", False),
        "replayed": len(replayed),
        "skipped": len(skipped),
        "skipped_by_reason": reasons,
        "seconds": round(seconds, 3),
        # The api's own time for the read-and-send, as the CLI measured it when it sent.
        "records_per_s": round(len(replayed) / seconds, 1) if seconds > 0 else 0.0,
        "replayed_records": replayed,
        "skipped_records": skipped,
    }


def dlq_summary(s: dict[str, Any]) -> dict[str, Any]:
    """A topic's summary as `podium dlq list` printed it."""
    return s | {"oldest": iso(s.get("oldest")), "newest": iso(s.get("newest"))}


def find_topic(summaries: list[dict[str, Any]], name: str, prefix: str) -> dict[str, Any] | None:
    """``name``'s summary, the name given with or without the topic prefix."""
    for candidate in (name, f"{prefix}.{name}"):
        for s in summaries:
            if s["topic"] == candidate:
                return s
    return None
