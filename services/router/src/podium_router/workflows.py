"""Workflow definitions: YAML files loaded and validated at start-up.

Errors name the file, the line and the field, so a bad definition is refused
before the router consumes anything. Expressions and templates are checked
here too: a workflow that loads can only fail on the data it is given.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Sequence
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
from podium_router import safe_yaml
from podium_router.expressions import check
from podium_router.settings import MAX_FANOUT, MAX_STEP_DISPATCHES, Limits
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


def widest(steps: Sequence[StepDef]) -> list[str]:
    """The largest set of steps that can be in flight at once: no one of them needs
    another, even through other steps (a maximum antichain of the ``needs`` order).

    Any such set can really run together (each step's needs finish first, the set's
    own steps are slow), so this, not the widest wave of ``runnable_steps``, is the
    fan-out a workflow can cause: ``a, b→c`` starts a and b, then runs c beside a.
    By Dilworth's theorem its size is the number of steps less a maximum matching
    of "u comes before v" (Hopcroft-Karp); König's theorem gives the set itself."""
    ids = [s.id for s in steps]
    index = {step_id: i for i, step_id in enumerate(ids)}
    dependents: list[list[int]] = [[] for _ in ids]
    for v, s in enumerate(steps):
        for name in s.needs:
            if name in index:
                dependents[index[name]].append(v)
    # after[u]: every step that needs u, directly or not, as a bit set. Kept as bits
    # and walked only where the matching looks: a 1000-step chain has half a million
    # such pairs, and listing them costs a second.
    after = [0] * len(ids)
    for u in reversed(_topological(steps, index)):
        for v in dependents[u]:
            after[u] |= after[v] | (1 << v)
    # Seed the matching along the direct needs (a chain is matched link by link):
    # Hopcroft-Karp then has little left to augment.
    seed: list[int | None] = [None] * len(ids)
    taken = [False] * len(ids)
    for u, direct in enumerate(dependents):
        first = next((v for v in direct if not taken[v]), None)
        if first is not None:
            seed[u], taken[first] = first, True
    match_left, match_right = _matching(after, seed)
    # König: from the unmatched left vertices, walk alternating paths; a step whose
    # left copy is reached and right copy is not belongs to a maximum antichain.
    seen_left = {u for u, v in enumerate(match_left) if v is None}
    seen_right: set[int] = set()
    queue = deque(seen_left)
    while queue:
        u = queue.popleft()
        for v in _bits(after[u]):
            if v not in seen_right:
                seen_right.add(v)
                w = match_right[v]
                if w is not None and w not in seen_left:
                    seen_left.add(w)
                    queue.append(w)
    return [ids[i] for i in range(len(ids)) if i in seen_left and i not in seen_right]


def _topological(steps: Sequence[StepDef], index: dict[str, int]) -> list[int]:
    """Step indexes, each after every step it needs (the workflow has no cycle)."""
    waiting = [sum(1 for n in s.needs if n in index) for s in steps]
    dependents: list[list[int]] = [[] for _ in steps]
    for v, s in enumerate(steps):
        for name in s.needs:
            if name in index:
                dependents[index[name]].append(v)
    order = [v for v, count in enumerate(waiting) if count == 0]
    for u in order:  # grows as it goes
        for v in dependents[u]:
            waiting[v] -= 1
            if waiting[v] == 0:
                order.append(v)
    return order


def _bits(x: int) -> Iterator[int]:
    """The positions of the bits set in ``x``, lowest first."""
    while x:
        low = x & -x
        yield low.bit_length() - 1
        x ^= low


def _next_bit(x: int, start: int) -> int | None:
    """The lowest bit set in ``x`` at ``start`` or above, or None."""
    rest = x >> start
    return None if rest == 0 else start + (rest & -rest).bit_length() - 1


def _matching(
    adjacent: list[int], seed: list[int | None]
) -> tuple[list[int | None], list[int | None]]:
    """A maximum matching of a bipartite graph whose left vertex u is joined to the
    right vertices in the bit set ``adjacent[u]`` (Hopcroft-Karp), grown from
    ``seed`` (left vertex -> right vertex, already a matching)."""
    n = len(adjacent)
    left = list(seed)
    right: list[int | None] = [None] * n
    for u, v in enumerate(left):
        if v is not None:
            right[v] = u
    free = -1
    while True:
        # Breadth first from the free left vertices: layer the shortest augmenting paths.
        layer: list[int] = [free] * n
        queue = deque(u for u in range(n) if left[u] is None)
        for u in queue:
            layer[u] = 0
        found = False
        while queue:
            u = queue.popleft()
            for v in _bits(adjacent[u]):
                w = right[v]
                if w is None:
                    found = True
                elif layer[w] == free:
                    layer[w] = layer[u] + 1
                    queue.append(w)
        if not found:
            return left, right
        # Depth first along the layers, without recursion: a workflow may be long.
        for start in range(n):
            if left[start] is not None:
                continue
            path: list[tuple[int, int]] = []  # the edges (u, v) taken to reach the top
            stack = [(start, 0)]  # (left vertex, lowest right vertex not yet tried)
            while stack:
                u, at = stack[-1]
                v = _next_bit(adjacent[u], at)
                if v is None:
                    layer[u] = free  # a dead end this phase
                    stack.pop()
                    if path:
                        path.pop()
                    continue
                stack[-1] = (u, v + 1)
                w = right[v]
                if w is None:
                    # Augment: flip every edge on the path from start to v.
                    for pu, pv in [*path, (u, v)]:
                        left[pu], right[pv] = pv, pu
                    break
                if layer[w] == layer[u] + 1:
                    path.append((u, v))
                    stack.append((w, 0))


def limit_problems(workflow: Workflow, limits: Limits) -> list[str]:
    """What in ``workflow`` could never run within ``limits`` (empty: it fits)."""
    problems = []
    if len(workflow.steps) > limits.max_step_dispatches:
        problems.append(
            f"{len(workflow.steps)} steps, more than {MAX_STEP_DISPATCHES}"
            f" ({limits.max_step_dispatches}) lets one task dispatch"
        )
    # Cheap first: a workflow can never be wider than it is long.
    if len(workflow.steps) > limits.max_fanout:
        wide = widest(workflow.steps)
        if len(wide) > limits.max_fanout:
            shown = ", ".join(wide[:5]) + (", ..." if len(wide) > 5 else "")
            problems.append(
                f"{len(wide)} steps can run at once ({shown}),"
                f" more than {MAX_FANOUT} ({limits.max_fanout})"
            )
    return problems


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


def load_file(path: Path, limits: Limits | None = None) -> Workflow:
    """The workflow in ``path``, refused with a ``WorkflowError`` naming the file if it
    is not valid or could not run within ``limits`` (the defaults when None)."""
    if path.stat().st_size > safe_yaml.MAX_BYTES:
        raise WorkflowError(f"{path}: larger than {safe_yaml.MAX_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"{path}: not UTF-8 text: {exc}") from exc
    try:
        node, raw = safe_yaml.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise WorkflowError(f"{path}{where}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or node is None:
        raise WorkflowError(f"{path}:1: a workflow must be a YAML mapping")
    try:
        workflow = Workflow.model_validate(raw)
    except ValidationError as exc:
        lines = _lines(node)
        problems = "; ".join(
            f"line {_line_of(lines, tuple(e['loc']))}: "
            f"{'.'.join(str(p) for p in e['loc']).replace('with_', 'with') or 'workflow'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise WorkflowError(f"{path}: {problems}") from exc
    over = limit_problems(workflow, limits or Limits())
    if over:
        raise WorkflowError(f"{path}: workflow {workflow.name!r}: {'; '.join(over)}")
    return workflow


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
    def load(cls, folders: str, limits: Limits | None = None) -> WorkflowCatalog:
        found: list[Workflow] = []
        for folder in filter(None, folders.split(":")):
            base = Path(folder)
            if not base.is_dir():
                raise WorkflowError(f"{base}: workflow folder does not exist")
            for path in sorted([*base.glob("*.yaml"), *base.glob("*.yml")]):
                found.append(load_file(path, limits))
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
