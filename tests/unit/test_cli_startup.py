"""`podium --help` answers without the heavy imports, `--version` names what is installed,
and the command modules share cli_common without importing cli.py back."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import podium

pytestmark = pytest.mark.unit

# What `python -X importtime -c "import podium.cli"` showed loading before commands
# imported their own needs (cumulative, on a loaded machine): podium_shared 490 ms (its
# package pulls the consume loop, SQLAlchemy, aiokafka and OpenTelemetry), SQLAlchemy
# 350 ms, podium_contracts 113 ms, aiokafka 77 ms, structlog 67 ms, rich 49 ms,
# pydantic_settings 49 ms. None of them is needed to print help.
HEAVY = (
    "sqlalchemy",
    "alembic",
    "aiokafka",
    "opentelemetry",
    "structlog",
    "yaml",
    "rich",
    "orjson",
    "pydantic_settings",
    "podium_shared",
    "podium_contracts",
    "podium_router",
    "podium_executor",
    "podium_memory",
    "podium_recovery",
)

# Run in a fresh interpreter: this test process has imported everything already.
PROBE = """
import json, sys
import podium.cli
from typer.main import get_command
from typer.testing import CliRunner

def paths(command, prefix=()):
    yield prefix
    for name, sub in getattr(command, "commands", {}).items():
        yield from paths(sub, (*prefix, name))

runner = CliRunner()
helps = {}
for path in paths(get_command(podium.cli.app)):
    result = runner.invoke(podium.cli.app, [*path, "--help"])
    helps[" ".join(path)] = [result.exit_code, result.output.startswith("Usage: ")]
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"helps": helps, "loaded": loaded}))
"""


def test_help_of_every_command_loads_none_of_the_heavy_modules() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *HEAVY], capture_output=True, text=True, check=True
    )
    report = json.loads(done.stdout)
    assert report["loaded"] == []
    assert {"", "status", "submit", "dlq", "dlq replay", "outbox parked"} <= set(report["helps"])
    assert {path: tuple(r) for path, r in report["helps"].items() if r != [0, True]} == {}


def test_version_names_the_package_and_every_contract() -> None:
    from podium.cli import app
    from podium_contracts import ALL_CONTRACTS

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[:2] == [
        f"podium {version('podium')}",
        f"podium-contracts {version('podium-contracts')}",
    ]
    assert [line.strip() for line in lines[2:]] == [c.CE_TYPE for c in ALL_CONTRACTS]


def test_the_command_modules_never_import_cli_back() -> None:
    """cli.py imports them; an import of cli from one of them would be a cycle."""
    folder = Path(podium.__file__).parent
    modules = sorted(folder.glob("cli_*.py"))
    assert {m.stem for m in modules} >= {"cli_common", "cli_dlq", "cli_outbox", "cli_trace"}
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            assert "podium.cli" not in names, f"{module.name} imports podium.cli"


def test_every_command_sets_its_logging_up_when_it_runs() -> None:
    """main() no longer sets logging up (that would import podium_shared for --help):
    each command does, as a cli_common.Command, including those of the sub-apps."""
    from typer.main import get_command

    from podium.cli import app
    from podium.cli_common import Command

    def leaves(command: Any) -> list[Any]:
        subs = getattr(command, "commands", None)
        return [command] if subs is None else [c for s in subs.values() for c in leaves(s)]

    commands = leaves(get_command(app))
    assert len(commands) >= 15
    assert [c.name for c in commands if not isinstance(c, Command)] == []
