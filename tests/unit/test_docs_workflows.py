"""Every workflow, or part of one, written in the README and docs/ is one the router
loads: its fields, expressions and templates pass the same validation as a file in
workflows/ (the invocations themselves run in tests/e2e/test_docs_examples.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from podium_router.workflows import Workflow

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def documented_workflows() -> list[tuple[str, dict[str, Any]]]:
    """Whole workflows, their `steps:`, or a list of steps; `with:` blocks alone are a
    capability's input, documented on its own page, and not a workflow."""
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for i, match in enumerate(BLOCK.finditer(doc.read_text()), start=1):
            data = yaml.safe_load(match.group(1))
            if isinstance(data, list):
                data = {"steps": data}
            if not isinstance(data, dict) or "steps" not in data:
                continue
            found.append((f"{doc.name} block {i}", {"name": "documented", **data}))
    return found


WORKFLOWS = documented_workflows()


@pytest.mark.parametrize(("where", "definition"), WORKFLOWS, ids=[w for w, _ in WORKFLOWS])
def test_a_documented_workflow_loads(where: str, definition: dict[str, Any]) -> None:
    Workflow.model_validate(definition)


def test_the_documented_workflows_were_found() -> None:
    assert {w.split(" ")[0] for w, _ in WORKFLOWS} >= {"router.md", "dead-letters.md"}
