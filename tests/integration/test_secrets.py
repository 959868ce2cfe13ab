"""Secrets stay secret in a running stack (docs/security.md, "Secrets").

A marker (``sk-MARKER-<uuid>``) is in every secret setting the stack reads: the LLM
key (from a file), the SASL password (from the environment; Tansu's listener does
not ask for it, every client still holds it), and, where a PostgreSQL server is
available, the password in the router's database URL (from a file). The journeys
run: hello, a chat step against the fake provider, a chat step whose provider
echoes the request's ``Authorization`` header in its 401 (fatal: dead-lettered at
once), a drill step that fails fatally; with tracing on and /metrics served. Then
every log, span file and database under PODIUM_HOME, every /metrics text, every
history row, every DLQ record's headers and value, and every ``--json`` output is
searched for the marker: zero hits. That the search would find it is shown first:
the marker is in the secret files, and the provider received the key. Every file
and folder under PODIUM_HOME is private to its owner."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import TaskCompleted, TaskFailed, TaskSubmitted
from podium_router.state import history
from tests.conftest import POSTGRES_ADMIN_URL, stack_settings
from tests.support.api_runs import until_api_sees
from tests.support.fake_openai import FakeOpenAI
from tests.support.kafka import read_topic

pytestmark = pytest.mark.integration

MARKER = f"sk-MARKER-{uuid.uuid4().hex}"


@dataclass
class Secured:
    stack: Stack
    fake: FakeOpenAI
    files: list[Path]  # where the secrets are kept, outside PODIUM_HOME


def hits(data: bytes | str) -> int:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return text.count(MARKER)


def _postgres_role(admin_url: str, password: str) -> tuple[str, str]:
    """A login role with ``password`` owning a database of its own: (name, URL)."""
    name = f"podium_secrets_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'"))
        conn.execute(sa.text(f'CREATE DATABASE "{name}" OWNER "{name}"'))
    admin.dispose()
    url = make_url(admin_url).set(username=name, password=password, database=name)
    return name, url.render_as_string(hide_password=False)


def _drop_role(admin_url: str, name: str) -> None:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(scope="module")
def secured(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    home = tmp_path_factory.mktemp("podium-secrets")
    kept = tmp_path_factory.mktemp("kept-secrets")
    key_file = kept / "llm.key"
    key_file.write_text(f"{MARKER}-llm\n")
    files = [key_file]
    overrides: dict[str, object] = {}
    with ExitStack() as cleanup:
        if POSTGRES_ADMIN_URL:
            role, url = _postgres_role(POSTGRES_ADMIN_URL, f"{MARKER}-db")
            cleanup.callback(_drop_role, POSTGRES_ADMIN_URL, role)
            url_file = kept / "router.url"
            url_file.write_text(url + "\n")
            files.append(url_file)
            overrides["router_database_url_file"] = url_file
        fake = cleanup.enter_context(FakeOpenAI())
        env = {
            "PODIUM_TRACING": "local",
            "PODIUM_SASL_PASSWORD": f"{MARKER}-sasl",
            "PODIUM_EXECUTOR_LLM_API_KEY_FILE": str(key_file),
            "PODIUM_EXECUTOR_LLM_BASE_URL": fake.base_url,
            "PODIUM_EXECUTOR_LLM_MODEL": "gpt-4o-mini",
        }
        # The api too: `podium status`, `history`, `trace` and `dlq` read through it.
        stack = cleanup.enter_context(
            Stack(stack_settings(kafka_bootstrap, home, **overrides), env=env, api=True)
        )
        stack.operator_token()
        yield Secured(stack, fake, files)


def podium(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, with the stack's environment (and so its secrets)."""
    return subprocess.run(
        [sys.executable, "-m", "podium", *args],
        env=stack.child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _run(stack: Stack, tasks: list[TaskSubmitted]) -> dict[str, object]:
    async with PodiumClient(stack.settings) as client:
        for task in tasks:
            await client.submit(task)
        return await client.wait_for([t.task_id for t in tasks], 90)


def test_no_secret_reaches_logs_spans_metrics_history_dlq_or_json(secured: Secured) -> None:
    stack = secured.stack
    # The search finds the marker where it is meant to be.
    assert all(hits(f.read_text()) == 1 for f in secured.files)

    def tid(name: str) -> str:
        return f"secrets-{name}-{uuid.uuid4().hex[:8]}"

    hello = TaskSubmitted(task_id=tid("hello"), workflow="hello", input={"text": "hi"})
    chat = TaskSubmitted(task_id=tid("chat"), workflow="secrets-chat", input={"text": "hello"})
    echo = TaskSubmitted(task_id=tid("echo"), workflow="secrets-chat", input={"text": "echoauth"})
    doomed = TaskSubmitted(task_id=tid("fatal"), workflow="recovery-fatal", input={})
    outcomes = asyncio.run(_run(stack, [hello, chat, echo, doomed]))

    assert isinstance(outcomes[hello.task_id], TaskCompleted), outcomes[hello.task_id]
    assert isinstance(outcomes[chat.task_id], TaskCompleted), outcomes[chat.task_id]
    # The key was used: the provider received it (so the executor held it).
    sent = [r["headers"].get("Authorization") for r in secured.fake.requests]
    assert f"Bearer {MARKER}-llm" in sent and len(sent) == 2
    failed = outcomes[echo.task_id]
    assert isinstance(failed, TaskFailed), failed
    assert "401" in failed.error.message and "Bearer ***" in failed.error.message, failed.error
    assert hits(failed.model_dump_json()) == 0
    fatal = outcomes[doomed.task_id]
    assert isinstance(fatal, TaskFailed) and fatal.dlq is not None, fatal
    assert failed.dlq is not None

    # Every DLQ record: headers and value.
    records = asyncio.run(read_topic(stack.bootstrap, failed.dlq.topic, at_least=2))
    ours = [
        r
        for r in records
        if any(t in (r.value or b"").decode() for t in (echo.task_id, doomed.task_id))
    ]
    assert len(ours) == 2, records
    for record in records:
        assert hits(record.value or b"") == 0
        assert all(hits(v) == 0 for _k, v in record.headers), record.headers
    echoed = next(r for r in ours if echo.task_id in (r.value or b"").decode())
    assert b"Bearer ***" in dict(echoed.headers)["podium-dlq-error-message"]

    # Every --json output (status, history, trace and dlq through the api, once it has
    # heard the outcomes).
    asyncio.run(until_api_sees(stack, [t.task_id for t in (hello, chat, echo, doomed)]))
    outputs = {}
    for task in (hello, chat, echo, doomed):
        outputs[f"history {task.task_id}"] = podium(stack, "history", task.task_id, "--json")
        outputs[f"status {task.task_id}"] = podium(stack, "status", task.task_id, "--json")
    outputs["status"] = podium(stack, "status", "--json")
    outputs["dlq list"] = podium(stack, "dlq", "list", "--json")
    outputs["dlq show"] = podium(stack, "dlq", "show", failed.dlq.topic, "--json")
    outputs["trace"] = podium(stack, "trace", echo.task_id, "--json")
    for what, run in outputs.items():
        assert run.returncode == 0, (what, run.stderr)
        assert hits(run.stdout) == 0 and hits(run.stderr) == 0, (what, run.stdout, run.stderr)
    assert "Bearer ***" in outputs[f"history {echo.task_id}"].stdout
    assert "echoauth" in outputs["dlq show"].stdout  # the records are there, masked

    # Every history row, read from the router's database itself.
    engine = sa.create_engine(stack.settings.database_url("router"))
    with engine.connect() as conn:
        rows = [str(tuple(r)) for r in conn.execute(sa.select(history))]
    engine.dispose()
    assert any(echo.task_id in r and "Bearer ***" in r for r in rows), rows
    assert sum(hits(r) for r in rows) == 0

    # Every /metrics text.
    scraped = [
        urllib.request.urlopen(p.metrics_url, timeout=5).read().decode()
        for p in stack.processes
        if p.metrics_url
    ]
    assert len(scraped) == len(stack.processes) >= 4
    assert any("podium_step_duration_seconds" in s for s in scraped)
    assert sum(hits(s) for s in scraped) == 0

    # Stopped, so every span and log line is flushed; then every file under PODIUM_HOME.
    home = stack.settings.home
    stack.stop()
    spans = list((home / "spans").glob("*.jsonl"))
    logs = list((home / "logs").glob("*.log"))
    assert spans and logs
    assert any("Bearer ***" in f.read_text() for f in spans)
    files = [p for p in home.rglob("*") if p.is_file()]
    leaked = {str(p): hits(p.read_bytes()) for p in files}
    assert sum(leaked.values()) == 0, {p: n for p, n in leaked.items() if n}

    # Private to the user podium runs as: no group or world bits on anything it wrote.
    for path in [home, *home.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
