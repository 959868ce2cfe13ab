"""One service shape: every __main__ refuses a bad setting the same way, the
executor's settings take PODIUM_EXECUTOR_* with the old names as aliases, and a
replica's instance name is what `podium.stack` waits for."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import podium_executor.__main__ as executor_main
import podium_memory.__main__ as memory_main
import podium_recovery.__main__ as recovery_main
import podium_router.__main__ as router_main
from podium_executor.settings import ExecutorSettings, deprecated_variables
from podium_recovery.settings import RecoverySettings
from podium_shared import runtime
from podium_shared.runtime import ServiceSpec, instance_name
from podium_shared.startup import BadSetting, read_settings, refusing

pytestmark = pytest.mark.unit

MAINS: dict[str, Callable[[], None]] = {
    "router": router_main.main,
    "executor": lambda: executor_main.main([]),
    "memory": memory_main.main,
    "recovery": recovery_main.main,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PODIUM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PODIUM_HOME", str(tmp_path))
    # serve() sets up logging for the process; the test session keeps its own.
    monkeypatch.setattr(runtime, "configure", lambda *_: None)


def test_a_bad_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_RECOVERY_MAX_ATTEMPTS", "0")
    with pytest.raises(BadSetting, match=r"^PODIUM_RECOVERY_MAX_ATTEMPTS: Input should be"):
        read_settings(RecoverySettings)


def test_a_check_across_settings_keeps_its_own_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_RECOVERY_INITIAL_S", "50")
    with pytest.raises(BadSetting, match=r"PODIUM_RECOVERY_INITIAL_S .* is over PODIUM_RECOVERY"):
        read_settings(RecoverySettings)


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("router", "PODIUM_TOPIC_PREFIX", "not a prefix"),
        ("router", "PODIUM_ROUTER_STEP_TIMEOUT_S", "0"),
        ("executor", "PODIUM_EXECUTOR_CONCURRENCY", "0"),
        ("memory", "PODIUM_MEMORY_RECALL_LIMIT", "0"),
        ("recovery", "PODIUM_RECOVERY_MAX_ATTEMPTS", "0"),
    ],
)
def test_every_service_refuses_a_bad_setting_in_one_line_with_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    service: str,
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        MAINS[service]()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{service}: bad setting {variable}")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_executor_reads_its_own_prefix_first(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ExecutorSettings().pool == "default"
    monkeypatch.setenv("PODIUM_POOL", "old")
    monkeypatch.setenv("PODIUM_CONCURRENCY", "7")
    monkeypatch.setenv("PODIUM_LLM_MODEL", "m")
    xs = ExecutorSettings()
    assert (xs.pool, xs.concurrency, xs.llm_model) == ("old", 7, "m")
    monkeypatch.setenv("PODIUM_EXECUTOR_POOL", "new")
    assert ExecutorSettings().pool == "new"
    assert ExecutorSettings(pool="given").pool == "given"


def test_the_old_names_are_reported_as_deprecated() -> None:
    environ = {"PODIUM_POOL": "gpu", "PODIUM_EXECUTOR_CONCURRENCY": "3", "PODIUM_HOME": "/x"}
    assert deprecated_variables(environ) == [("PODIUM_POOL", "PODIUM_EXECUTOR_POOL")]


def test_a_bad_executor_setting_names_both_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_POOL", "Not A Pool")
    with pytest.raises(BadSetting, match=r"^PODIUM_EXECUTOR_POOL or PODIUM_POOL: String should"):
        read_settings(ExecutorSettings)


def test_a_bad_definition_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    class DefinitionError(Exception):
        pass

    with pytest.raises(SystemExit) as exited, refusing("router", {DefinitionError: "bad thing"}):
        raise DefinitionError("a.yaml: line 4: no")
    assert exited.value.code == 2
    assert capsys.readouterr().err == "router: bad thing: a.yaml: line 4: no\n"


def test_other_errors_are_not_refusals() -> None:
    with pytest.raises(KeyError), refusing("memory", {ValueError: "bad"}):
        raise KeyError("a bug, with its traceback")


def test_instance_names_are_what_the_stack_waits_for() -> None:
    spec = ServiceSpec(name="executor", group="g", topics=[], handler=None, engine=None)  # type: ignore[arg-type]
    assert instance_name(spec) == f"executor-{os.getpid()}"
    spec.instance = "executor-gpu"
    assert instance_name(spec) == f"executor-gpu-{os.getpid()}"
