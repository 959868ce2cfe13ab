"""`podium dlq list | show | replay`: the dead-letter topics, for operators, through the
operators' API (show and list as a viewer; replay needs an operator token)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from podium.cli_common import EXIT_USAGE, App, JsonFlag, call_api, emit, fail, load_settings

if TYPE_CHECKING:
    from podium.api_client import ApiClient

dlq_app = App("dlq", "List, inspect and replay dead-letter topics.")

T = TypeVar("T")

TopicArg = Annotated[str, typer.Argument(help="a DLQ topic, with or without the prefix")]
ErrorTypeOpt = Annotated[
    str | None, typer.Option("--error-type", help="error type, error class or DLQ reason")
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="dead-lettered since: RFC 3339 or an age (10m, 2h)")
]
TaskOpt = Annotated[str | None, typer.Option("--task", help="only this task's records")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="the oldest N that match")]


def _on_topic(work: Callable[[ApiClient], T]) -> T:
    """``work`` through the api; a topic it does not know is a usage error (exit 2), as
    a mistyped topic has always been."""
    from podium.api_client import ApiError, NotFound

    def asking(api: ApiClient) -> T:
        try:
            return work(api)
        except NotFound as exc:
            raise ApiError(str(exc), EXIT_USAGE) from exc

    return call_api(asking)


@dlq_app.command("list")
def list_(
    topic: Annotated[str | None, typer.Argument(help="one DLQ topic; omit for all")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The DLQ topics with their counts, oldest and newest, grouped by error (from the
    api: the records of the token's tenants)."""
    from podium.api_views import dlq_summary, find_topic

    summaries = [dlq_summary(s) for s in call_api(lambda api: api.dead_letters())]
    if topic:
        one = find_topic(summaries, topic, load_settings().topic_prefix)
        if one is None:
            known = ", ".join(s["topic"] for s in summaries) or "none yet"
            fail(f"no topic {topic!r} (dead-letter topics: {known})", EXIT_USAGE)
        summaries = [one]
    lines = []
    for s in summaries:
        span = f"  {s['oldest']} .. {s['newest']}" if s["count"] else ""
        lines.append(f"{s['topic']}\t{s['count']}{span}")
        lines += [
            f"  {g['count']:>8}  {g['reason']}"
            + (f" {g['error_class']}" if g["error_class"] else "")
            + (f" {g['error_type']}" if g["error_type"] else "")
            for g in s["groups"]
        ]
    emit(summaries, as_json, "\n".join(lines) or "no dead-letter topics")


@dlq_app.command()
def show(
    topic: TopicArg,
    error_type: ErrorTypeOpt = None,
    since: SinceOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = 20,
    as_json: JsonFlag = False,
) -> None:
    """Records with their headers and decoded payloads."""
    import orjson

    from podium import api_views as views

    since_at = _since(since)  # a bad --since is told before anything is asked
    found = _on_topic(
        lambda api: api.dead_letter_records(
            topic, error_type=error_type, task_id=task, since=since_at, limit=limit
        )
    )
    data = [views.dlq_record(found["topic"], r) for r in found["records"]]
    blocks = []
    for d in data:
        head = (
            f"{d['id']}  {d['topic']}[{d['partition']}]@{d['offset']}  {d['time']}\n"
            f"  {d['reason']}: {d['error_type']}"
            + (f" ({d['error_class']})" if d["error_class"] else "")
            + f": {d['error_message']}\n"
            f"  from {d['original_topic']}, attempts {d['attempts']}"
            + (f", task {d['task_id']}" if d["task_id"] else "")
            + (f", step {d['step_id']}" if d["step_id"] else "")
        )
        headers = "\n".join(f"    {k}: {v}" for k, v in d["headers"].items())
        body = (
            orjson.dumps(d["payload"], option=orjson.OPT_INDENT_2).decode()
            if d["payload"] is not None
            else repr(d.get("value"))
        )
        blocks.append(f"{head}\n  key: {d['key']}\n  headers:\n{headers}\n  payload: {body}")
    emit(data, as_json, "\n\n".join(blocks) or "no matching records")


def _since(raw: str | None) -> str | None:
    """--since as the api takes it: an RFC 3339 time (an age is from now)."""
    from podium_shared.dlq_replay import parse_since

    if raw is None:
        return None
    try:
        return parse_since(raw).isoformat()
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


def summary_text(data: dict[str, Any], to: str | None) -> str:
    """The replay report (the CLI's --json shape) as `podium dlq replay` says it."""
    verb = "would replay" if data["dry_run"] else "replayed"
    where = f" to {to}" if to else " to their original topics"
    text = f"{verb} {data['replayed']} of {data['selected']} from {data['topic']}{where}"
    if data["replayed"] and not data["dry_run"]:
        text += f" in {data['seconds']:.2f}s ({data['records_per_s']:.0f} records/s)"
    if data["skipped_by_reason"]:
        text += f"; skipped {data['skipped']}: " + ", ".join(
            f"{n} {why}" for why, n in data["skipped_by_reason"].items()
        )
        text += "".join(
            f"\n  skipped {s.get('id')} (task {s.get('task_id')}): {s.get('why')}"
            for s in data["skipped_records"][:20]
        )
    return text


@dlq_app.command("replay")
def replay_(
    topic: TopicArg,
    error_type: ErrorTypeOpt = None,
    since: SinceOpt = None,
    task: TaskOpt = None,
    limit: LimitOpt = None,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="a record's ce_id or partition:offset")
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="publish here instead of the original topic (a DLQ's source)"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be sent")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Send the selected records back for another try (the DLQ itself is unchanged)."""
    from podium import api_views as views

    since_at = _since(since)  # a bad --since is told before anything is asked
    report = _on_topic(
        lambda api: api.replay(
            topic,
            ids=ids,
            error_type=error_type,
            task_id=task,
            since=since_at,
            limit=limit,
            dry_run=dry_run,
            to=to,
        )
    )
    data = views.replay_view(report)
    emit(data, as_json, summary_text(data, to))
