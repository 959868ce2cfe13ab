"""`podium trace TASK_ID [--json]`: the task's cross-service trace as a waterfall."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from podium.cli_common import JsonFlag, call_api, fail, print_json


def trace_command(
    task_id: Annotated[str, typer.Argument(help="the task whose trace to draw")],
    as_json: JsonFlag = False,
) -> None:
    """Draw a task's trace across services (from the api; the spans it reads from the
    local span store or the OTLP backend)."""
    from rich.console import Console

    from podium.trace import render

    data = _from_api(task_id)
    if as_json:
        print_json(data)
        return
    render(data, Console(width=max(Console().width, 140)))


def _from_api(task_id: str) -> dict[str, Any]:
    from podium import api_views as views
    from podium.trace import shape

    found = call_api(lambda api: api.trace(task_id))
    ids, spans = views.trace_spans(found)
    data = shape(task_id, ids, spans)
    if not data["traces"]:
        fail(f"no spans for task {task_id} (source: {found.get('source', '?')})")
    return data
