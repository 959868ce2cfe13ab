"""What the api of a test stack says of a run, for tests that drive the CLI through it
(`podium status`, `history`, `trace`, `dlq replay`): the api learns an outcome from the
topics, after the client that waited for it, so a test waits for the api to see it."""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from podium.api_client import operator_token_file
from podium.stack import Stack
from tests.support.waiting import wait_until

OVER = ("completed", "failed", "cancelled")


def api_status(stack: Stack, task_id: str) -> str | None:
    """The run's status as the stack's api answers it (None: it knows no such run)."""
    token = operator_token_file(stack.settings.home).read_text().strip()
    with httpx.Client(base_url=stack.api_url, timeout=10) as api:
        r = api.get(f"/v1/runs/{task_id}", headers={"Authorization": f"Bearer {token}"})
    if r.status_code == 404:
        return None
    r.raise_for_status()
    status: str = r.json()["status"]
    return status


async def until_api_sees(
    stack: Stack, task_ids: Iterable[str], statuses: Iterable[str] = OVER, timeout_s: float = 60
) -> None:
    """Wait until the api shows every one of ``task_ids`` in one of ``statuses``."""
    wanted, pending = frozenset(statuses), list(task_ids)

    def seen() -> bool:
        while pending and api_status(stack, pending[0]) in wanted:
            pending.pop(0)
        return not pending

    await wait_until(seen, timeout_s, f"the api seeing {pending} in {sorted(wanted)}")
