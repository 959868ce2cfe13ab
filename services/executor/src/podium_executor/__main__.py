"""`python -m podium_executor --pool NAME --concurrency N`: run one executor
replica. Without flags, PODIUM_POOL and PODIUM_CONCURRENCY apply."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from podium_executor.bootstrap import build
from podium_executor.runner import run_executor
from podium_executor.settings import ExecutorSettings
from podium_shared import Settings
from podium_shared.logs import configure


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="podium-executor", description="Run one replica of an executor pool."
    )
    parser.add_argument("--pool", help="the pool to serve (default: PODIUM_POOL or 'default')")
    parser.add_argument(
        "--concurrency", type=int, help="steps in flight (default: PODIUM_CONCURRENCY or 16)"
    )
    return parser.parse_args(argv)


def load_settings(
    pool: str | None = None, concurrency: int | None = None
) -> tuple[Settings, ExecutorSettings]:
    """Settings from the environment, with the command line's pool and concurrency on top."""
    overrides: dict[str, object] = {}
    if pool is not None:
        overrides["pool"] = pool
    if concurrency is not None:
        overrides["concurrency"] = concurrency
    xs = ExecutorSettings(**overrides)  # type: ignore[arg-type]
    return Settings(pool=xs.pool), xs


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings, xs = load_settings(args.pool, args.concurrency)
    configure("executor", settings.log_level)
    asyncio.run(run_executor(settings, build(settings, xs)))


if __name__ == "__main__":
    main()
