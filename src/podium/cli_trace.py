"""`podium trace TASK_ID [--json]`: the task's cross-service trace as a waterfall."""

from __future__ import annotations

from typing import Annotated

import typer

from podium.cli_common import JsonFlag, fail, load_settings, print_json


def trace_command(
    task_id: Annotated[str, typer.Argument(help="the task whose trace to draw")],
    as_json: JsonFlag = False,
) -> None:
    """Draw a task's trace across services, from the spans kept under PODIUM_HOME."""
    from rich.console import Console

    from podium.trace import TraceNotFound, render, task_trace

    settings = load_settings()
    try:
        data = task_trace(settings.home, task_id)
    except TraceNotFound as exc:
        fail(str(exc))
    if as_json:
        print_json(data)
        return
    render(data, Console(width=max(Console().width, 140)))
