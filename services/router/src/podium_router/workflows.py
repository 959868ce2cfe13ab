"""Workflow definitions: YAML files loaded and validated at start-up.

Errors name the file, the line and the field, so a bad definition is refused
before the router consumes anything. Expressions and templates are checked
here too: a workflow that loads can only fail on the data it is given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from podium_contracts import FallbackPolicy, RetryPolicy
from podium_router.expressions import check
from podium_router.templates import check_template


class WorkflowError(Exception):
    """A workflow file that cannot be loaded; the message names file, line and field."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``30s``, ``500ms``, ``2m``, ``1h`` or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f"{value!r} is not a duration such as 30s, 500ms, 2m or 1h")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class RouteRule(BaseModel):
    """One routing rule: the first whose ``when`` holds (or that has none) wins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    when: str | None = None
    pool: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    model: str | None = None

    @field_validator("when")
    @classmethod
    def _safe(cls, v: str | None) -> str | None:
        if v is not None:
            check(v)
        return v


class RetrySpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial: Duration = 1.0
    max: Duration = 60.0
    jitter: bool = True

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff=self.backoff,
            initial_s=self.initial,
            max_s=self.max,
            jitter=self.jitter,
        )


class FallbackSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pool: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    model: str | None = None
    after_attempts: int = Field(default=1, ge=1)

    def policy(self) -> FallbackPolicy:
        return FallbackPolicy(pool=self.pool, model=self.model, after_attempts=self.after_attempts)


class StepDef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    id: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    uses: str = Field(min_length=1, description="capability name")
    pool: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    needs: tuple[str, ...] = ()
    with_: dict[str, Any] | None = Field(default=None, alias="with")
    route: tuple[RouteRule, ...] = ()
    timeout: Duration | None = None
    retry: RetrySpec | None = None
    fallback: FallbackSpec | None = None

    @field_validator("with_")
    @classmethod
    def _safe_templates(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            check_template(v)
        return v


class Workflow(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    version: int = Field(default=1, ge=1)
    description: str = ""
    steps: tuple[StepDef, ...] = Field(min_length=1)
    output: Any = None

    @field_validator("output")
    @classmethod
    def _safe_output(cls, v: Any) -> Any:
        check_template(v)
        return v

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
        """Steps nothing else needs: their output is the task's output by default."""
        needed = {n for s in self.steps for n in s.needs}
        return [s for s in self.steps if s.id not in needed]


def _lines(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map each field path of a YAML document to its line number (1-based)."""
    out = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out |= _lines(value, (*path, key.value))
            out[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out |= _lines(item, (*path, i))
    return out


def _line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    loc = tuple("with" if p == "with_" else p for p in loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def load_file(path: Path) -> Workflow:
    text = path.read_text()
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise WorkflowError(f"{path}{where}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or node is None:
        raise WorkflowError(f"{path}:1: a workflow must be a YAML mapping")
    try:
        return Workflow.model_validate(raw)
    except ValidationError as exc:
        lines = _lines(node)
        problems = "; ".join(
            f"line {_line_of(lines, tuple(e['loc']))}: "
            f"{'.'.join(str(p) for p in e['loc']).replace('with_', 'with') or 'workflow'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
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

    def get(self, name: str, version: int | None = None) -> Workflow | None:
        """A named version, or the newest when no version is asked for."""
        versions = self._by_name.get(name)
        if not versions:
            return None
        return versions.get(version) if version is not None else versions[max(versions)]

    def latest(self, name: str) -> Workflow | None:
        return self.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def all(self) -> list[Workflow]:
        """Every loaded version of every workflow."""
        return [wf for versions in self._by_name.values() for wf in versions.values()]
