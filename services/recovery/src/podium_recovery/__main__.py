"""`python -m podium_recovery`: run the recovery service until SIGTERM."""

from __future__ import annotations

import asyncio
import sys

from pydantic import ValidationError

from podium_recovery.bootstrap import build
from podium_recovery.settings import RecoverySettings
from podium_shared import Settings, run_service
from podium_shared.logs import configure


def main() -> None:
    settings = Settings()
    configure("recovery", settings.log_level)
    try:
        recovery_settings = RecoverySettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f"PODIUM_RECOVERY_{str(first['loc'][0]).upper()}: " if first["loc"] else ""
        print(f"recovery: bad setting {where}{first['msg']}", file=sys.stderr)
        raise SystemExit(2) from exc
    asyncio.run(run_service(settings, build(settings, recovery_settings)))


if __name__ == "__main__":
    main()
