"""`python -m podium_memory`: run the memory service until SIGTERM."""

from __future__ import annotations

import asyncio

from podium_memory.bootstrap import build
from podium_shared import Settings, run_service
from podium_shared.logs import configure


def main() -> None:
    settings = Settings()
    configure("memory", settings.log_level)
    asyncio.run(run_service(settings, build(settings)))


if __name__ == "__main__":
    main()
