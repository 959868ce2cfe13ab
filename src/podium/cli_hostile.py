"""`podium hostile --count N --seed S [--json]`: the hostile-input barrage of issue 12
against a running stack (PODIUM_KAFKA_BOOTSTRAP), then a normal task to prove the
services alive. Exit 0 when every record is accounted for and the task completed,
1 otherwise, 2 on a usage error."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from podium.cli_common import EXIT_USAGE, JsonFlag, emit, fail, kafka_settings

if TYPE_CHECKING:
    from podium.hostile import Report


def hostile_command(
    count: Annotated[int, typer.Option(min=1, max=1_000_000, help="records to send")] = 3000,
    seed: Annotated[int, typer.Option(help="the same seed sends the same records")] = 0,
    kind: Annotated[
        list[str] | None, typer.Option("--kind", help="only these kinds (default: all)")
    ] = None,
    skip: Annotated[list[str] | None, typer.Option("--skip", help="leave these kinds out")] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="seconds to wait for every record's fate")
    ] = 300.0,
    as_json: JsonFlag = False,
) -> None:
    """Send seeded malformed records to every consumed topic and account for each."""
    import asyncio

    from podium.hostile import KINDS, hello_completes, run_hostile

    settings = kafka_settings()
    unknown = sorted(set((kind or []) + (skip or [])) - KINDS.keys())
    if unknown:
        fail(f"unknown kind {', '.join(unknown)}; choose from {', '.join(KINDS)}", EXIT_USAGE)
    kinds = [k for k in (kind or KINDS) if k not in (skip or ())]
    if not kinds:
        fail("--skip leaves no kind to send", EXIT_USAGE)

    async def work() -> Report:
        report = await run_hostile(settings, count, seed, kinds=kinds, timeout_s=timeout)
        report.alive = await hello_completes(settings)
        return report

    report = asyncio.run(work())
    emit(report.as_dict(), as_json, report.text())
    if not report.ok:
        raise SystemExit(1)
