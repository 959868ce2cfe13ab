"""The egress policy in a running stack (docs/security.md, "Egress"): the executor,
allowed onto loopback by PODIUM_EXECUTOR_EGRESS_ALLOW, reaches a local server with
the shipped fetch-and-summarise workflow; the broker's own port on the same loopback
and the cloud metadata address are refused, the refusal is a fatal `egress_refused`
in the task's failure, its history and the DLQ, and it is not retried."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import StepErrorType, TaskCompleted, TaskFailed, TaskSubmitted
from podium_shared import dlq_headers
from tests.conftest import stack_settings
from tests.support.http_server import serving
from tests.support.kafka import read_topic
from tests.support.router_db import task_history

pytestmark = pytest.mark.integration


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def page() -> Iterator[str]:
    with serving(_Page) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """All of loopback allowed: the broker's port is refused all the same."""
    home = tmp_path_factory.mktemp("podium-egress")
    env = {"PODIUM_EXECUTOR_EGRESS_ALLOW": "127.0.0.1"}
    with Stack(stack_settings(kafka_bootstrap, home), env=env) as s:
        yield s


async def fetch(stack: Stack, url: str) -> TaskCompleted | TaskFailed:
    task = TaskSubmitted(
        task_id=f"egress-{uuid.uuid4().hex[:8]}", workflow="fetch-and-summarise", input={"url": url}
    )
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 60))[task.task_id]
    assert isinstance(outcome, TaskCompleted | TaskFailed), outcome
    return outcome


async def test_an_allow_listed_server_is_reached(stack: Stack, page: str) -> None:
    outcome = await fetch(stack, page)
    assert isinstance(outcome, TaskCompleted), outcome
    assert outcome.output == {"summary": "primary answered 200, mirror 200", "same": True}


@pytest.mark.parametrize(
    ("target", "reason"),
    [("bootstrap", "podium cluster's own services"), ("metadata", "link-local")],
)
async def test_a_refused_address_fails_the_step_fatally_into_the_dlq(
    stack: Stack, target: str, reason: str
) -> None:
    url = (
        f"http://{stack.bootstrap.split(',')[0]}/"
        if target == "bootstrap"
        else "http://169.254.169.254/latest/meta-data/"
    )
    outcome = await fetch(stack, url)
    assert isinstance(outcome, TaskFailed), outcome
    assert outcome.error.type == StepErrorType.EGRESS_REFUSED, outcome.error
    assert reason in outcome.error.message and "refused" in outcome.error.message

    info = task_history(stack.settings, outcome.task_id)
    assert "retry_scheduled" not in [e["event"] for e in info["history"]]
    assert any(reason in str(e) for e in info["history"]), info["history"]

    assert outcome.dlq is not None
    records = await read_topic(stack.bootstrap, outcome.dlq.topic, at_least=1)
    record = next(r for r in records if dict(r.headers)["ce_id"].decode() == outcome.dlq.record_id)
    meta = dlq_headers(list(record.headers))
    assert meta["error-type"] == "egress_refused" and meta["error-class"] == "fatal"
    assert reason in meta["error-message"]
