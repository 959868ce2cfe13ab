"""Workflow definitions: YAML files loaded and validated at start-up.

Errors name the file and the field, so a bad definition is refused before the
router consumes anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class WorkflowError(Exception):
    """A workflow file that cannot be loaded; the message names file and field."""


class StepDef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    id: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    uses: str = Field(min_length=1, description="capability name")
    pool: str | None = None
    needs: tuple[str, ...] = ()
    with_: dict[str, Any] | None = Field(default=None, alias="with")
    timeout: float | None = Field(default=None, gt=0, description="seconds")


class Workflow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    version: int = Field(default=1, ge=1)
    description: str = ""
    steps: tuple[StepDef, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _valid_graph(self) -> Workflow:
        ids = [s.id for s in self.steps]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"duplicate step ids: {sorted(dupes)}")
        known = set(ids)
        for s in self.steps:
            unknown = set(s.needs) - known
            if unknown:
                raise ValueError(f"step {s.id!r} needs unknown steps {sorted(unknown)}")
        # Kahn's algorithm: every step must become runnable, or there is a cycle.
        done: set[str] = set()
        while len(done) < len(ids):
            ready = [s.id for s in self.steps if s.id not in done and set(s.needs) <= done]
            if not ready:
                raise ValueError(f"steps form a cycle: {sorted(known - done)}")
            done.update(ready)
        return self

    def step(self, step_id: str) -> StepDef:
        return next(s for s in self.steps if s.id == step_id)

    @property
    def final_steps(self) -> list[StepDef]:
        """Steps nothing else needs: their output is the task's output."""
        needed = {n for s in self.steps for n in s.needs}
        return [s for s in self.steps if s.id not in needed]


def load_file(path: Path) -> Workflow:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise WorkflowError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise WorkflowError(f"{path}: a workflow must be a YAML mapping")
    try:
        return Workflow.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'workflow'}: {e['msg']}" for e in exc.errors()
        )
        raise WorkflowError(f"{path}: {problems}") from exc


class WorkflowCatalog:
    """Every loaded workflow, by name and version; the newest version is the default."""

    def __init__(self, workflows: list[Workflow]) -> None:
        self._by_name: dict[str, dict[int, Workflow]] = {}
        for wf in workflows:
            versions = self._by_name.setdefault(wf.name, {})
            if wf.version in versions:
                raise WorkflowError(f"workflow {wf.name!r} version {wf.version} is defined twice")
            versions[wf.version] = wf

    @classmethod
    def load(cls, folders: str) -> WorkflowCatalog:
        found: list[Workflow] = []
        for folder in filter(None, folders.split(":")):
            base = Path(folder)
            if not base.is_dir():
                raise WorkflowError(f"{base}: workflow folder does not exist")
            for path in sorted([*base.glob("*.yaml"), *base.glob("*.yml")]):
                found.append(load_file(path))
        return cls(found)

    def latest(self, name: str) -> Workflow | None:
        versions = self._by_name.get(name)
        return versions[max(versions)] if versions else None

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)
