"""The api's composition root."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_api.app import create_app
from podium_api.dead_letters import DeadLetters
from podium_api.handlers import make_handler
from podium_api.http import serve_http
from podium_api.live import Changes
from podium_api.migrations import HISTORY
from podium_api.pools import Pools
from podium_api.routes_pools import configure
from podium_api.service import Commands
from podium_api.settings import ApiSettings
from podium_api.state import meta
from podium_api.traces import trace_source
from podium_shared import ServiceSpec, Settings, Topics
from podium_shared.db import insert_ignore
from podium_shared.migrations import open_database
from podium_shared.startup import read_settings


def database_epoch(engine: Engine) -> str:
    """This database's epoch, made when it is new: a new database (a dropped
    projection) gets a new consumer group, which reads every topic from the start."""
    with engine.begin() as conn:
        insert_ignore(conn, meta, {"key": "epoch", "value": uuid.uuid4().hex[:12]})
        return str(conn.execute(sa.select(meta.c.value).where(meta.c.key == "epoch")).scalar_one())


def consumer_group(topics: Topics, epoch: str) -> str:
    return f"{topics.group('api')}-{epoch}"


def open_api_database(settings: Settings) -> Engine:
    return open_database(settings.database_url("api"), HISTORY)


def build(settings: Settings, api_settings: ApiSettings | None = None) -> ServiceSpec:
    s = api_settings or read_settings(ApiSettings)
    topics = Topics(settings.topic_prefix)
    engine = open_api_database(settings)
    group = consumer_group(topics, database_epoch(engine))
    commands = Commands(topics)
    changes = Changes()
    dead_letters = DeadLetters(settings)
    pools = Pools(settings)
    return ServiceSpec(
        name="api",
        group=group,
        topics=[topics.tasks, topics.task_events, topics.step_results, topics.step_failures],
        handler=make_handler(changes.notify),
        engine=engine,
        background=[
            serve_http(
                lambda notify: configure(
                    create_app(
                        engine,
                        commands,
                        notify=notify,
                        page_max=s.page_max,
                        changes=changes,
                        dead_letters=dead_letters.summaries,
                        dlq=dead_letters,
                        traces=trace_source(settings.home, s.trace_url),
                    ),
                    pools=pools.views,
                    workflows=settings.workflows,
                ),
                s.host,
                s.port,
            )
        ],
        # An observer of topics other services own: their poison is theirs to dead-letter.
        dead_letters=False,
        details={"http": f"{s.host}:{s.port}"},
    )
