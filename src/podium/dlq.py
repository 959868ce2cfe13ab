"""Dead-letter topics for operators: list, inspect and replay them.

Plain functions over an aiokafka consumer and producer. A DLQ record is the
original key, value and headers plus ``podium-dlq-*`` headers (see
``podium_shared.dlq``); a replay publishes the original part, byte for byte,
back to the original topic (or another one) and leaves the DLQ as it is.

Why a replay never runs a step's effect twice: the record keeps its ``ce_id``.
A ``step_abandoned`` record's ``ce_id`` is fresh (recovery minted it when it
dead-lettered the request), so the executor's inbox has never seen it and runs
the step once; a second replay of the same record carries the same ``ce_id``
and the inbox drops it; and the capability gets the step's idempotency key,
stable across retries and replays, so an effect is recorded once per key.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from podium.status import StatusError, router_db
from podium_router.state import runs
from podium_shared import Settings

# Read here before they moved to podium_shared (the api reads and replays dead letters
# too); re-exported for the CLI, the tests and the bench.
from podium_shared.dlq_records import DlqError as DlqError
from podium_shared.dlq_records import DlqRecord as DlqRecord
from podium_shared.dlq_records import dlq_topics as dlq_topics
from podium_shared.dlq_records import from_consumer_record as from_consumer_record
from podium_shared.dlq_records import read_records as read_records
from podium_shared.dlq_records import summarize as summarize
from podium_shared.dlq_replay import SKIP_STATES as SKIP_STATES
from podium_shared.dlq_replay import Filters as Filters
from podium_shared.dlq_replay import ReplayReport as ReplayReport
from podium_shared.dlq_replay import parse_since as parse_since
from podium_shared.dlq_replay import plan_replay as plan_replay
from podium_shared.dlq_replay import replay as replay
from podium_shared.dlq_replay import resolve_topic as resolve_topic
from podium_shared.dlq_replay import select as select
from podium_shared.dlq_replay import send_all as send_all


def task_states(settings: Settings, task_ids: Iterable[str]) -> dict[str, str]:
    """The router's status of each task it knows (read-only, like `podium status`)."""
    wanted = sorted(set(task_ids))
    if not wanted:
        return {}
    found: dict[str, str] = {}
    try:
        with router_db(settings) as conn:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                rows = conn.execute(
                    sa.select(runs.c.task_id, runs.c.status).where(runs.c.task_id.in_(chunk))
                )
                found.update({r.task_id: str(r.status) for r in rows})
    except (StatusError, sa.exc.SQLAlchemyError) as exc:
        raise DlqError(f"cannot read task states from the router database: {exc}") from exc
    return found
