"""Recovery's composition root."""

from __future__ import annotations

import asyncio
import random

from podium_recovery.handlers import make_handler
from podium_recovery.migrations import HISTORY
from podium_recovery.migrations.skeleton import to_baseline
from podium_recovery.service import Recovery
from podium_recovery.settings import RecoverySettings
from podium_recovery.timers import make_timer_loop
from podium_shared import ServiceSpec, Settings, Topics
from podium_shared.dbthread import call_on_loop
from podium_shared.migrations import open_database
from podium_shared.startup import read_settings


def build(
    settings: Settings,
    recovery_settings: RecoverySettings | None = None,
    rng: random.Random | None = None,
) -> ServiceSpec:
    rs = recovery_settings or read_settings(RecoverySettings)
    topics = Topics(settings.topic_prefix)
    engine = open_database(settings.database_url("recovery"), HISTORY, legacy=to_baseline)
    timer_wake = asyncio.Event()  # a retry scheduled here starts a timer round at once

    def wake_timers() -> None:
        # Told from ``apply``, on the database thread on PostgreSQL: asyncio's Event is the loop's.
        call_on_loop(timer_wake.set)

    return ServiceSpec(
        name="recovery",
        group=topics.group("recovery"),
        topics=[topics.step_failures],
        handler=make_handler(Recovery(topics, rs, rng=rng, timer_scheduled=wake_timers)),
        engine=engine,
        background=[
            make_timer_loop(
                engine,
                interval_s=rs.timer_interval_s,
                idle_s=rs.timer_idle_s,
                batch=rs.timer_batch,
                wake=timer_wake,
            )
        ],
    )
