"""`podium migrate`: bring each service's database to its newest schema revision.

Every service also does this itself at start-up; the command is for upgrading
ahead of a rollout (or checking where a database is) without starting anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import podium_executor.migrations
import podium_memory.migrations
import podium_recovery.migrations
import podium_router.migrations
from podium_recovery.migrations.skeleton import to_baseline
from podium_shared import Settings
from podium_shared.db import connect
from podium_shared.migrations import Legacy, migrate
from podium_shared.settings import ServiceName

SERVICES: tuple[ServiceName, ...] = ("router", "executor", "memory", "recovery")


@dataclass(frozen=True, slots=True)
class History:
    path: Path
    legacy: Legacy | None = None


HISTORIES: dict[ServiceName, History] = {
    "router": History(podium_router.migrations.HISTORY),
    "executor": History(podium_executor.migrations.HISTORY),
    "memory": History(podium_memory.migrations.HISTORY),
    "recovery": History(podium_recovery.migrations.HISTORY, to_baseline),
}


def migrate_service(settings: Settings, service: ServiceName) -> str:
    """Migrate one service's database (the executor's of ``settings.pool``); its revision."""
    history = HISTORIES[service]
    engine = connect(settings.database_url(service))
    try:
        return migrate(engine, history.path, legacy=history.legacy)
    finally:
        engine.dispose()
