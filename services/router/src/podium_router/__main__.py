"""`python -m podium_router`: run the router until SIGTERM."""

from __future__ import annotations

import asyncio
import sys

from podium_router.bootstrap import build
from podium_router.workflows import WorkflowError
from podium_shared import Settings, run_service
from podium_shared.logs import configure


def main() -> None:
    settings = Settings()
    configure("router", settings.log_level)
    try:
        spec = build(settings)
    except WorkflowError as exc:
        print(f"router: bad workflow definition: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    asyncio.run(run_service(settings, spec))


if __name__ == "__main__":
    main()
