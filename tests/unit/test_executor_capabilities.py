"""Built-in capabilities (drills, template, http.request), plugin discovery and
the process's command line."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import BaseModel

from podium_contracts import StepCompleted, StepFailed, StepRequested
from podium_executor.__main__ import load_settings
from podium_executor.capabilities import (
    BUILTINS,
    Capability,
    PluginError,
    Resources,
    StepContext,
    builtin_capabilities,
    capability,
    discover,
)
from podium_executor.capabilities.drills import make_drills, record_once
from podium_executor.service import Executor
from podium_executor.settings import ExecutorSettings, deprecated_variables
from podium_shared import Topics

pytestmark = pytest.mark.unit


def step(capability: str, input: dict[str, Any], attempt: int = 1) -> StepRequested:
    return StepRequested(
        task_id="t1",
        step_id="s",
        workflow="w",
        capability=capability,
        pool="default",
        input=input,
        idempotency_key="t1/s",
        attempt=attempt,
    )


def with_drills(root: Path) -> dict[str, Capability]:
    return {**BUILTINS, **{c.name: c for c in make_drills(root)}}


async def run(
    capability: str, input: dict[str, Any], attempt: int = 1, root: Path | None = None
) -> Any:
    """Run one step on the built-ins plus the drills, confined to ``root``."""
    caps = with_drills(root or Path("/nonexistent-drills-root"))
    return await Executor(caps, Topics("t")).run_step(step(capability, input, attempt))


async def test_flaky_fails_retryably_on_its_first_attempts() -> None:
    for attempt in (1, 2):
        out = await run("flaky", {"fail_attempts": 2, "v": 1}, attempt)
        assert isinstance(out, StepFailed)
        assert (out.error.type, out.error.error_class) == ("unavailable", "retryable")
    out = await run("flaky", {"fail_attempts": 2, "v": 1}, 3)
    assert isinstance(out, StepCompleted) and out.output == {"fail_attempts": 2, "v": 1}


async def test_fail_uses_its_class_until_the_fix_file_exists(tmp_path: Path) -> None:
    fix = tmp_path / "fixed"
    fatal = await run(
        "fail", {"error": "fatal", "message": "bad", "unless_exists": str(fix)}, root=tmp_path
    )
    assert isinstance(fatal, StepFailed)
    assert (fatal.error.type, fatal.error.error_class, fatal.error.message) == (
        "capability_error",
        "fatal",
        "bad",
    )
    retry = await run("fail", {"error": "retryable"})
    assert isinstance(retry, StepFailed) and retry.error.error_class == "retryable"
    fix.touch()
    fixed = await run("fail", {"error": "fatal", "unless_exists": str(fix)}, root=tmp_path)
    assert isinstance(fixed, StepCompleted)


async def test_effect_record_appends_once_per_key(tmp_path: Path) -> None:
    path = tmp_path / "fx.jsonl"
    first = await run("effect.record", {"path": str(path), "value": 7}, root=tmp_path)
    again = await run("effect.record", {"path": str(path), "value": 8}, root=tmp_path)
    assert isinstance(first, StepCompleted) and first.output["appended"] is True
    assert isinstance(again, StepCompleted) and again.output["appended"] is False
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    pid = os.getpid()
    assert lines == [{"key": "t1/s", "task_id": "t1", "step_id": "s", "value": 7, "pid": pid}]


async def test_a_production_executor_does_not_know_the_drills() -> None:
    async with httpx.AsyncClient() as http:
        caps = discover(Resources(ExecutorSettings(drills=False), http))
    assert not {"flaky", "fail", "effect.record"} & set(caps)
    out = await Executor(caps, Topics("t")).run_step(
        step("effect.record", {"path": "/tmp/anywhere.jsonl", "value": 1})
    )
    assert isinstance(out, StepFailed)
    assert (out.error.type, out.error.error_class) == ("unknown_capability", "fatal")


async def test_drills_are_offered_only_when_podium_drills_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PODIUM_DRILLS", raising=False)
    assert ExecutorSettings().drills is False
    monkeypatch.setenv("PODIUM_DRILLS", "true")
    monkeypatch.setenv("PODIUM_DRILLS_ROOT", str(tmp_path))
    xs = ExecutorSettings()
    assert (xs.drills, xs.drills_root) == (True, tmp_path)
    assert deprecated_variables({"PODIUM_DRILLS": "1", "PODIUM_DRILLS_ROOT": "/x"}) == []
    async with httpx.AsyncClient() as http:
        assert {"flaky", "fail", "effect.record"} <= set(discover(Resources(xs, http)))
        with pytest.raises(PluginError, match="PODIUM_DRILLS_ROOT"):
            discover(Resources(xs.model_copy(update={"drills_root": None}), http))


async def test_drill_files_are_confined_to_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "home", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").touch()
    (root / "link").symlink_to(outside)
    for path in (
        str(outside / "fx.jsonl"),  # absolute, elsewhere
        "../outside/fx.jsonl",  # relative, climbing out
        str(root / ".." / "outside" / "fx.jsonl"),
        str(root / "link" / "fx.jsonl"),  # a symbolic link out of the root
    ):
        out = await run("effect.record", {"path": path, "value": 1}, root=root)
        assert isinstance(out, StepFailed), path
        assert (out.error.type, out.error.error_class) == ("forbidden", "fatal")
        assert "outside the drills root" in out.error.message
    assert list(outside.iterdir()) == [outside / "secret"]  # nothing written there
    # fail's unless_exists is no oracle for files elsewhere: refused, not answered.
    probe = await run("fail", {"unless_exists": str(outside / "secret")}, root=root)
    assert isinstance(probe, StepFailed) and probe.error.type == "forbidden"
    inside = await run("effect.record", {"path": "sub/fx.jsonl", "value": 2}, root=root)
    assert isinstance(inside, StepCompleted) and (root / "sub" / "fx.jsonl").exists()


def test_effect_record_is_atomic_across_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "fx.jsonl"
    line = {"key": "k", "task_id": "t", "step_id": "s", "value": None}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: record_once(path, line), range(40)))
    assert results.count(True) == 1 and len(path.read_bytes().splitlines()) == 1


@pytest.mark.parametrize(
    ("input", "outcome"),
    [
        ({"template": "Hi {{ name | upper }}!", "values": {"name": "ada"}}, "Hi ADA!"),
        ({"template": "{{ missing }}"}, "invalid_input"),
        ({"template": "{% if %}"}, "invalid_input"),
        ({"template": "{{ ''.__class__.__mro__ }}"}, "invalid_input"),
    ],
    ids=["renders", "undefined", "syntax", "sandboxed"],
)
async def test_template(input: dict[str, Any], outcome: str) -> None:
    out = await run("template", input)
    if isinstance(out, StepCompleted):
        assert out.output == {"text": outcome}
    else:
        assert out.error.type == outcome, out.error


class Upstream:
    """A local HTTP server: /big answers 2 KB, /busy 503, /slow-down 429,
    /missing 404, anything else echoes the request's Idempotency-Key."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                if self.command == "POST":
                    self.rfile.read(int(self.headers.get("content-length", 0)))
                status, body = {
                    "/big": (200, b"x" * 2048),
                    "/busy": (503, b"busy"),
                    "/slow-down": (429, b"later"),
                    "/missing": (404, b"no"),
                }.get(
                    self.path,
                    (200, orjson.dumps({"key": self.headers.get("Idempotency-Key")})),
                )
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.mark.parametrize(
    ("path", "method", "expected"),
    [
        ("/echo", "POST", "t1/s"),
        ("/echo", "GET", None),
        ("/big", "GET", "capability_error"),
        ("/busy", "GET", "unavailable"),
        ("/slow-down", "GET", "rate_limited"),
        ("/missing", "GET", "capability_error"),
    ],
)
async def test_http_request(upstream: Upstream, path: str, method: str, expected: Any) -> None:
    settings = ExecutorSettings(http_max_bytes=1024)
    async with httpx.AsyncClient() as http:
        caps = {c.name: c for c in builtin_capabilities(Resources(settings, http))}
        out = await Executor(caps, Topics("t")).run_step(
            step("http.request", {"url": upstream.url + path, "method": method, "json": {"a": 1}})
        )
    if isinstance(out, StepCompleted):
        assert out.output["status"] == 200 and out.output["body"] == {"key": expected}
    else:
        assert out.error.type == expected, out.error


class CityInput(BaseModel):
    city: str


@capability("weather.lookup")
async def lookup(data: CityInput, ctx: StepContext) -> dict[str, Any]:
    """Look up the weather (a test plugin)."""
    return {"city": data.city, "key": ctx.idempotency_key}


def factory(_resources: Resources) -> list[Capability]:
    return [
        Capability("made.one", CityInput, lookup.run),
        Capability("made.two", CityInput, lookup.run),
    ]


fake_sleep = Capability("sleep", CityInput, lookup.run)


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group="podium.capabilities")


async def test_plugins_from_entry_points_and_settings() -> None:
    here = __name__
    async with httpx.AsyncClient() as http:
        resources = Resources(ExecutorSettings(plugins=f"{here}:factory"), http)
        caps = discover(resources, [ep("weather", f"{here}:lookup")])
        assert {"weather.lookup", "made.one", "made.two", "echo", "llm.chat"} <= set(caps)
        out = await Executor(caps, Topics("t")).run_step(step("weather.lookup", {"city": "Oslo"}))
        assert isinstance(out, StepCompleted) and out.output == {"city": "Oslo", "key": "t1/s"}
        with pytest.raises(PluginError, match="already defined by built-in"):
            discover(resources, [ep("clash", f"{here}:fake_sleep")])
        assert discover(resources, [ep("same", f"{here}:lookup"), ep("again", f"{here}:lookup")])
        with pytest.raises(PluginError, match="nope"):
            discover(resources, [ep("bad", f"{here}:nope")])
        with pytest.raises(PluginError, match="module:attribute"):
            discover(Resources(ExecutorSettings(plugins="justamodule"), http), [])


def test_capability_decorator_needs_a_model() -> None:
    with pytest.raises(TypeError, match="pydantic model"):

        @capability("bad")
        async def bad(data: dict[str, Any], ctx: StepContext) -> Any:  # type: ignore[type-var]
            return data


def test_command_line_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_POOL", "envpool")
    monkeypatch.setenv("PODIUM_CONCURRENCY", "5")
    settings, xs = load_settings()
    assert (settings.pool, xs.pool, xs.concurrency) == ("envpool", "envpool", 5)
    settings, xs = load_settings("gpu", 32)
    assert (settings.pool, xs.pool, xs.concurrency) == ("gpu", "gpu", 32)
    assert settings.database_url("executor").endswith("executor-gpu.db")
