"""`podium trace TASK_ID [--json]`: the task's cross-service trace as a waterfall."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console

from podium.trace import TraceNotFound, render, task_trace
from podium_shared import Settings


def trace_command(
    task_id: Annotated[str, typer.Argument(help="the task whose trace to draw")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Draw a task's trace across services, from the spans kept under PODIUM_HOME."""
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        print(
            f"podium: error: bad setting PODIUM_{str(first['loc'][0]).upper()}: {first['msg']}",
            file=sys.stderr,
        )
        raise SystemExit(2) from exc
    try:
        data = task_trace(settings.home, task_id)
    except TraceNotFound as exc:
        print(f"podium: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    if as_json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    render(data, Console(width=max(Console().width, 140)))
