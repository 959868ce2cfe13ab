"""`podium dlq list | show | replay`: the dead-letter topics, for operators."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from podium.cli_common import (
    EXIT_USAGE,
    LOCAL_UNTIL_MERGE,
    App,
    JsonFlag,
    call_api,
    emit,
    fail,
    kafka_settings,
    load_settings,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from podium.dlq import DlqRecord, Filters, ReplayReport
    from podium_shared import Settings

dlq_app = App("dlq", "List, inspect and replay dead-letter topics.")

PROGRESS_FROM = 100  # records: smaller replays finish before a bar is worth drawing
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


def _filters(
    error_type: str | None,
    since: str | None,
    task: str | None,
    limit: int | None,
    ids: list[str] | None = None,
) -> Filters:
    from podium.dlq import Filters, parse_since

    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    return Filters(
        error_type=error_type, since=since_at, task=task, ids=frozenset(ids or ()), limit=limit
    )


def _run(work: Callable[[], Awaitable[T]]) -> T:
    import asyncio

    from podium.dlq import DlqError

    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except DlqError as exc:
        fail(str(exc), EXIT_USAGE if str(exc).startswith("no topic") else 1)


async def _read(settings: Settings, topic: str) -> list[DlqRecord]:
    from podium.dlq import read_records
    from podium_shared.kafka import make_consumer

    # A consumer per topic: one assigned to a topic tracks only that topic's metadata.
    consumer = make_consumer(settings, group_id=None, client_id="podium-dlq")
    try:
        await consumer.start()  # inside: a consumer that failed to start is closed too
        return await read_records(consumer, topic)
    finally:
        await consumer.stop()


async def _topics(settings: Settings, topic: str | None) -> list[str]:
    from podium.dlq import dlq_topics, resolve_topic
    from podium_shared.kafka import make_consumer

    consumer = make_consumer(settings, group_id=None, client_id="podium-dlq")
    try:
        await consumer.start()
        if topic:
            return [await resolve_topic(consumer, topic, settings.topic_prefix)]
        return await dlq_topics(consumer, settings.topic_prefix)
    finally:
        await consumer.stop()


async def _selected(
    settings: Settings, topic: str, filters: Filters
) -> tuple[str, list[DlqRecord]]:
    from podium.dlq import select

    (name,) = await _topics(settings, topic)
    return name, select(await _read(settings, name), filters)


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

    if "dlq show" in LOCAL_UNTIL_MERGE:
        settings = kafka_settings()
        filters = _filters(error_type, since, task, limit)
        _, records = _run(lambda: _selected(settings, topic, filters))
        data = [r.as_dict() for r in records]
    else:
        from podium import api_views as views

        found = call_api(
            lambda api: api.dead_letter_records(
                topic, error_type=error_type, task_id=task, since=_since(since), limit=limit
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
    from podium.dlq import parse_since

    if raw is None:
        return None
    try:
        return parse_since(raw).isoformat()
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)


def _api_summary_text(data: dict[str, Any], to: str | None) -> str:
    """The api's replay report as `podium dlq replay` has always said it."""
    verb = "would replay" if data["dry_run"] else "replayed"
    where = f" to {to}" if to else " to their original topics"
    text = f"{verb} {data['replayed']} of {data['selected']} from {data['topic']}{where}"
    if data["skipped_by_reason"]:
        text += f"; skipped {data['skipped']}: " + ", ".join(
            f"{n} {why}" for why, n in data["skipped_by_reason"].items()
        )
        text += "".join(
            f"\n  skipped {s.get('id')} (task {s.get('task_id')}): {s.get('why')}"
            for s in data["skipped_records"][:20]
        )
    return text


def _progress(total: int, enabled: bool) -> Progress:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _summary_text(report: ReplayReport, to: str | None) -> str:
    verb = "would replay" if report.dry_run else "replayed"
    where = f" to {to}" if to else " to their original topics"
    text = f"{verb} {len(report.replayed)} of {report.selected} from {report.topic}{where}"
    if report.replayed and not report.dry_run:
        text += f" in {report.seconds:.2f}s ({report.records_per_s:.0f} records/s)"
    skipped = report.skipped_by_reason()
    if skipped:
        text += f"; skipped {len(report.skipped)}: " + ", ".join(
            f"{n} {why}" for why, n in skipped.items()
        )
        text += "".join(
            f"\n  skipped {s['id']} (task {s['task_id']}): {s['why']}" for s in report.skipped[:20]
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
        str | None, typer.Option("--to", help="publish here instead of the original topic")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be sent")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Send the selected records back for another try (the DLQ itself is unchanged)."""
    if "dlq replay" not in LOCAL_UNTIL_MERGE:
        from podium import api_views as views

        data = views.replay_view(
            call_api(
                lambda api: api.replay(
                    topic,
                    ids=ids,
                    error_type=error_type,
                    task_id=task,
                    since=_since(since),
                    limit=limit,
                    dry_run=dry_run,
                    to=to,
                )
            )
        )
        emit(data, as_json, _api_summary_text(data, to))
        return
    from podium.dlq import replay, task_states
    from podium_shared.kafka import make_producer

    settings = kafka_settings()
    filters = _filters(error_type, since, task, limit, ids)

    async def work() -> ReplayReport:
        name, records = await _selected(settings, topic, filters)
        states = task_states(settings, (t for r in records if (t := r.task_id)))
        producer = make_producer(settings, client_id="podium-dlq")
        try:
            await producer.start()
            show_bar = not as_json and not dry_run and len(records) >= PROGRESS_FROM
            with _progress(len(records), show_bar) as bar:
                job = bar.add_task("replay", total=len(records))
                return await replay(
                    producer,
                    name,
                    records,
                    states=states,
                    to=to,
                    dry_run=dry_run,
                    progress=lambda n: bar.advance(job, n),
                )
        finally:
            await producer.stop()

    report = _run(work)
    emit(report.as_dict(), as_json, _summary_text(report, to))
    sys.stdout.flush()
