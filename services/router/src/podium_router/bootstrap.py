"""The router's composition root."""

from __future__ import annotations

from podium_router.handlers import make_handler
from podium_router.migrations import HISTORY
from podium_router.routing import pools_of
from podium_router.service import Clock, Router, utc_now
from podium_router.settings import RouterSettings
from podium_router.watchdog import make_watchdog
from podium_router.workflows import WorkflowCatalog
from podium_shared import ServiceSpec, Settings, Topics
from podium_shared.migrations import open_database
from podium_shared.startup import read_settings


def build(
    settings: Settings,
    catalog: WorkflowCatalog | None = None,
    router_settings: RouterSettings | None = None,
    clock: Clock = utc_now,
) -> ServiceSpec:
    rs = router_settings or read_settings(RouterSettings)
    topics = Topics(settings.topic_prefix)
    catalog = catalog or WorkflowCatalog.load(settings.workflows, rs.limits())
    engine = open_database(settings.database_url("router"), HISTORY)
    router = Router(
        catalog,
        topics,
        step_timeout_s=rs.step_timeout_s,
        limits=rs.limits(),
        clock=clock,
        tenants=settings.tenant_names,
    )
    return ServiceSpec(
        name="router",
        group=topics.group("router"),
        topics=[
            topics.tasks,
            topics.step_results,
            *map(topics.tenant_tasks, settings.tenant_names),
        ],
        handler=make_handler(router),
        pools=tuple(sorted(pools_of(catalog.all()))),
        engine=engine,
        background=[make_watchdog(router, engine)],
    )
