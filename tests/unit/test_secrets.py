"""Secrets stay secret (docs/security.md, "Secrets"): the one redaction function and
each edge that uses it, the _FILE variants, and the modes of what podium writes."""

from __future__ import annotations

import io
import logging
import stat
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa
import structlog
from aiokafka import TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from podium_contracts import DlqReason, HistoryKind, StepFailed, StepRequested
from podium_executor.capabilities import Resources, builtin_capabilities
from podium_executor.service import Executor
from podium_executor.settings import ExecutorSettings
from podium_router.repository import RunRepository
from podium_router.state import history, metadata
from podium_shared import (
    Settings,
    Topics,
    dead_letter,
    dlq_headers,
    make_engine,
    secrets,
    telemetry,
)
from podium_shared.db import connect
from podium_shared.logs import RedactingFormatter, configure
from podium_shared.secrets import MASK, redact, redact_value
from tests.support.fake_openai import FakeOpenAI

pytestmark = pytest.mark.unit

KEY = "sk-MARKER-0123456789abcdef"


@pytest.fixture(autouse=True)
def registry() -> Iterator[None]:
    secrets.forget()
    yield
    secrets.forget()


# -- the function ----------------------------------------------------------------------------


def test_a_registered_value_is_masked_wherever_it_appears() -> None:
    secrets.register(KEY)
    assert redact(f"a{KEY}b {KEY}") == f"a{MASK}b {MASK}"
    assert redact("nothing here") == "nothing here"


def test_the_longest_secret_is_masked_whole_and_short_values_are_not_registered() -> None:
    secrets.register("abcdef", "abcdefghij", "dev")
    assert redact("abcdefghij abcdef dev") == f"{MASK} {MASK} dev"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "401: invalid header Authorization: Bearer tok-unknown-123",
            f"401: invalid header Authorization: Bearer {MASK}",
        ),
        ("{'authorization': 'Basic dXNlcjpwYXNz'}", f"{{'authorization': 'Basic {MASK}'}}"),
        ('"Authorization": "abc123secret"', f'"Authorization": "{MASK}"'),
        ("sent bearer eyJhbGciOi.x.y to it", f"sent bearer {MASK} to it"),
        (
            "could not connect to postgresql+psycopg://podium:p%40ss@db:5432/router",
            f"could not connect to postgresql+psycopg://podium:{MASK}@db:5432/router",
        ),
        ("postgresql://u:p@ss@h/db", f"postgresql://u:{MASK}@h/db"),
        ("http://example.com:8080/path?q=1 user@example.com", None),
        ("prompt_tokens=12 token count", None),
    ],
)
def test_credential_shaped_values_are_masked_unknown(text: str, expected: str | None) -> None:
    assert redact(text) == (text if expected is None else expected)


def test_values_inside_structures_are_masked() -> None:
    secrets.register(KEY)
    data = {"a": [KEY, {"b": (1, f"x{KEY}")}], "n": 3, "ok": True}
    assert redact_value(data) == {"a": [MASK, {"b": (1, f"x{MASK}")}], "n": 3, "ok": True}
    partition = TopicPartition("t", 0)  # a named tuple: kept as it is
    assert redact_value([partition]) == [partition]


def test_settings_register_every_secret_field_and_url_password(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        sasl_password="sasl-" + KEY,
        router_database_url=f"postgresql://podium:db-{KEY}@db/router",
    )
    assert "db-" + KEY not in repr(settings) and "sasl-" + KEY not in repr(settings)
    secrets.register_settings(settings, ExecutorSettings(llm_api_key="llm-" + KEY))
    line = f"sasl-{KEY} db-{KEY} llm-{KEY}"
    assert KEY not in redact(line)
    assert settings.database_url("router") == f"postgresql://podium:db-{KEY}@db/router"


def test_the_otlp_exporters_header_values_are_secrets() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": "x-honeycomb-team=abc123def,empty=",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Basic%20xyz987654",
    }
    assert secrets.otlp_header_values(env) == ["abc123def", "Basic%20xyz987654"]


# -- _FILE variants --------------------------------------------------------------------------


def test_the_llm_key_and_database_urls_can_come_from_files(tmp_path: Path) -> None:
    key_file = tmp_path / "llm.key"
    key_file.write_text(KEY + "\n")
    url_file = tmp_path / "router.url"
    url_file.write_text("sqlite:///x.db\n")
    xs = ExecutorSettings(llm_api_key_file=key_file)
    assert xs.llm_api_key is not None and xs.llm_api_key.get_secret_value() == KEY
    settings = Settings(home=tmp_path, router_database_url_file=url_file)
    assert settings.database_url("router") == "sqlite:///x.db"
    assert settings.configured_database_url("memory") is None


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "llm.key"
    key_file.write_text(KEY)
    with pytest.raises(ValidationError, match="PODIUM_EXECUTOR_LLM_API_KEY or"):
        ExecutorSettings(llm_api_key_file=key_file, llm_api_key="x")
    with pytest.raises(ValidationError, match="PODIUM_ROUTER_DATABASE_URL or"):
        Settings(
            home=tmp_path, router_database_url="sqlite:///a", router_database_url_file=key_file
        )
    with pytest.raises(ValidationError, match=r"cannot read .*missing: No such file"):
        Settings(home=tmp_path, memory_database_url_file=tmp_path / "missing")


# -- the edges -------------------------------------------------------------------------------


def _chat(content: str, **extra: object) -> StepRequested:
    return StepRequested(
        task_id="t1",
        step_id="chat",
        workflow="w",
        capability="llm.chat",
        pool="default",
        input={"messages": [{"role": "user", "content": content}], **extra},
        idempotency_key="t1/chat",
    )


async def _run_chat(step: StepRequested) -> StepFailed:
    with FakeOpenAI() as server:
        xs = ExecutorSettings(llm_base_url=server.base_url, llm_model="m", llm_api_key=KEY)
        secrets.register_settings(xs)
        async with httpx.AsyncClient() as http:
            caps = {c.name: c for c in builtin_capabilities(Resources(xs, http))}
            out = await Executor(caps, Topics("t")).run_step(step)
        if step.input.get("messages") and server.requests:
            assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert isinstance(out, StepFailed), out
    return out


async def test_a_provider_echoing_the_key_does_not_put_it_in_the_step_failure() -> None:
    failed = await _run_chat(_chat("echoauth"))
    assert failed.error.type == "capability_error" and "401" in failed.error.message
    assert KEY not in failed.error.message
    assert f"Authorization: Bearer {MASK}" in failed.error.message


@pytest.mark.parametrize("field", ["api_key", "Authorization", "headers", "base_url"])
async def test_a_task_cannot_set_the_provider_key_or_address(field: str) -> None:
    failed = await _run_chat(_chat("hi", **{field: "sk-from-the-task"}))
    assert failed.error.type == "invalid_input"
    assert "cannot be set by a task" in failed.error.message


def test_dlq_headers_carry_the_error_masked() -> None:
    secrets.register(KEY)
    message = dead_letter(
        topic="t.steps.v1",
        partition=0,
        offset=1,
        key=b"k",
        value=b"{}",
        headers=[],
        reason=DlqReason.STEP_ABANDONED,
        error_type="capability_error",
        error_message=f"llm answered 401: Bearer {KEY}",
        service="recovery",
        extra={"cause": f"key {KEY}"},
    )
    meta = dlq_headers(message.headers)
    assert KEY not in str(meta) and MASK in meta["error-message"] and meta["cause"] == f"key {MASK}"


def test_the_router_writes_history_causes_masked(tmp_path: Path) -> None:
    secrets.register(KEY)
    engine = make_engine(f"sqlite:///{tmp_path / 'router.db'}", metadata)
    with engine.begin() as conn:
        RunRepository(conn).record(
            "t1", datetime.now(UTC), HistoryKind.STEP_ABANDONED, cause=f"said {KEY}"
        )
        (cause,) = conn.execute(sa.select(history.c.cause)).scalars()
    assert cause == f"said {MASK}"


def test_log_lines_are_masked_tracebacks_included(capsys: pytest.CaptureFixture[str]) -> None:
    secrets.register(KEY)
    configure("svc")
    log = structlog.get_logger("t")
    try:
        raise RuntimeError(f"boom with {KEY}")
    except RuntimeError:
        log.exception("failed", header=f"Bearer {KEY}", nested={"k": [KEY]})
    err = capsys.readouterr().err
    assert "boom with" in err and "failed" in err
    assert KEY not in err
    # The standard library's lines (aiokafka, asyncio) go through the same mask.
    record = logging.LogRecord("aiokafka", logging.ERROR, "x", 1, "stdlib says %s", (KEY,), None)
    assert RedactingFormatter("%(message)s").format(record) == f"stdlib says {MASK}"


def test_spans_are_exported_masked(tmp_path: Path) -> None:
    secrets.register(KEY)
    exporter = InMemorySpanExporter()
    telemetry.configure_tracing("svc", tmp_path, exporter=exporter)
    try:
        with pytest.raises(ValueError), telemetry.span("s", **{"podium.x": f"v{KEY}"}):
            raise ValueError(f"provider said {KEY}")
        with telemetry.span("t"):
            telemetry.mark_failed("capability_error", f"said {KEY}")
    finally:
        telemetry.shutdown()
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    dumped = orjson.dumps([telemetry.span_dict(s) for s in spans]).decode()
    assert "provider said" in dumped and MASK in dumped
    assert KEY not in dumped


def test_cli_json_output_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    from podium.cli_common import print_json

    secrets.register(KEY)
    print_json({"error": {"message": f"Bearer {KEY}"}})
    out = capsys.readouterr().out
    assert KEY not in out and MASK in out


# -- files -----------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_podium_creates_its_folders_0700_and_files_0600(tmp_path: Path) -> None:
    home = tmp_path / "home" / "deep"
    secrets.private_dir(home)
    assert _mode(home) == 0o700 and _mode(home.parent) == 0o700
    with secrets.open_private(home / "logs" / "x.log") as f:
        f.write(b"line\n")
    assert _mode(home / "logs" / "x.log") == 0o600 and _mode(home / "logs") == 0o700
    engine = connect(f"sqlite:///{home / 'db' / 'router.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x int)"))
    engine.dispose()
    assert _mode(home / "db" / "router.db") == 0o600


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    secrets.private_dir(tmp_path)
    assert _mode(tmp_path) == 0o755


def test_span_files_are_0600(tmp_path: Path) -> None:
    exporter = telemetry.JsonLinesExporter(tmp_path / "spans" / "svc-1.jsonl")
    exporter.export([])
    exporter.shutdown()
    assert _mode(tmp_path / "spans" / "svc-1.jsonl") == 0o600


def test_the_excepthook_prints_the_traceback_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets.register(KEY)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    try:
        raise sa.exc.ArgumentError(f"Could not parse SQLAlchemy URL from 'postgresql://u:{KEY}@h'")
    except sa.exc.ArgumentError as exc:
        secrets.redacted_excepthook(type(exc), exc, exc.__traceback__)
    assert "Could not parse" in err.getvalue() and KEY not in err.getvalue()
