"""`python -m podium_executor --pool NAME --concurrency N`: run one executor
replica. Without flags, PODIUM_EXECUTOR_POOL and PODIUM_EXECUTOR_CONCURRENCY apply
(or their deprecated old names, PODIUM_POOL and PODIUM_CONCURRENCY)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import structlog

from podium_executor.bootstrap import build
from podium_executor.settings import ExecutorSettings, deprecated_variables
from podium_shared import ServiceSpec, Settings
from podium_shared.runtime import serve
from podium_shared.startup import read_settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="podium-executor", description="Run one replica of an executor pool."
    )
    parser.add_argument(
        "--pool", help="the pool to serve (default: PODIUM_EXECUTOR_POOL or 'default')"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help="steps in flight (default: PODIUM_EXECUTOR_CONCURRENCY or 16)",
    )
    return parser.parse_args(argv)


def overrides(pool: str | None, concurrency: int | None) -> dict[str, object]:
    """The command line's settings, on top of the environment's."""
    given = {"pool": pool, "concurrency": concurrency}
    return {k: v for k, v in given.items() if v is not None}


def load_settings(
    pool: str | None = None, concurrency: int | None = None
) -> tuple[Settings, ExecutorSettings]:
    """Settings from the environment, with the command line's pool and concurrency on top."""
    xs = ExecutorSettings(**overrides(pool, concurrency))  # type: ignore[arg-type]
    return Settings(pool=xs.pool), xs


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)

    def build_replica(settings: Settings) -> ServiceSpec:
        log = structlog.get_logger(__name__)
        for old, new in deprecated_variables(os.environ):
            log.warning("deprecated setting", variable=old, use=new)
        return build(
            settings, read_settings(ExecutorSettings, **overrides(args.pool, args.concurrency))
        )

    serve("executor", build_replica)


if __name__ == "__main__":
    main()
