"""`python -m podium_executor`: run one executor replica of PODIUM_POOL."""

from __future__ import annotations

import asyncio
import os

from podium_shared import Settings, run_service
from podium_shared.logs import configure

from podium_executor.bootstrap import build


def main() -> None:
    settings = Settings()
    configure("executor", settings.log_level)
    instance = f"executor-{settings.pool}-{os.getpid()}"
    asyncio.run(run_service(settings, build(settings), instance=instance))


if __name__ == "__main__":
    main()
