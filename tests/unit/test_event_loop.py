"""`PODIUM_EVENT_LOOP` (issue 18): asyncio's own loop or uvloop's, chosen at start-up;
a value that is neither stops a service with one line naming the variable."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from podium_shared import Settings
from podium_shared.runtime import loop_factory
from podium_shared.startup import BadSetting, read_settings
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def test_asyncio_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODIUM_EVENT_LOOP", raising=False)
    assert read_settings(Settings).event_loop == "asyncio"


@pytest.mark.parametrize(("value", "loop"), [("uvloop", "uvloop"), (" UVLoop ", "uvloop")])
def test_the_variable_chooses_the_loop(
    monkeypatch: pytest.MonkeyPatch, value: str, loop: str
) -> None:
    monkeypatch.setenv("PODIUM_EVENT_LOOP", value)
    assert read_settings(Settings).event_loop == loop


@pytest.mark.parametrize("value", ["tokio", "", "uv-loop"])
def test_a_bad_value_is_one_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PODIUM_EVENT_LOOP", value)
    with pytest.raises(BadSetting) as caught:
        read_settings(Settings)
    assert str(caught.value) == "PODIUM_EVENT_LOOP: Input should be 'asyncio' or 'uvloop'"


def test_a_service_refuses_a_bad_loop_with_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PODIUM_EVENT_LOOP": "tokio", "PODIUM_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "podium_recovery"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "recovery: bad setting PODIUM_EVENT_LOOP: Input should be 'asyncio' or 'uvloop'"
    ]


def test_asyncio_keeps_the_runner_default() -> None:
    assert loop_factory("asyncio") is None


def test_uvloop_runs_the_service_coroutine_on_a_uvloop_loop() -> None:
    async def which() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    with asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner:
        assert runner.run(which()) == "uvloop"


def test_an_unknown_loop_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no event loop 'tokio'"):
        loop_factory("tokio")
