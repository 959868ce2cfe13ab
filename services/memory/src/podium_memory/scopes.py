"""Scopes and entitlements as plain functions.

Every entry lives in exactly one scope: ``(tenant, kind, id)``. The tenant is
never taken from a step's input, only from the step itself, so nothing a
workflow or an upstream caller writes can cross a tenant. Within the tenant:

- ``subject``: the task's own subject only; naming another subject is refused.
- ``workflow``: the step's own workflow only. Episodes live here, and inherit
  the visibility of the task they record: a task without a subject leaves a
  shared episode, a subject's task leaves one only that subject sees (the
  entry's ``subject``), so the scope never carries one subject's task output
  to another.
- ``session``: a conversation, owned by the task's subject (or, for a task
  without a subject, by its workflow); the stored id is ``owner#session``, so
  guessing another user's session name reaches nothing.
- ``project``: shared by name inside the tenant; reachable by any step whose
  input names it (the workflow author grants it in ``with:``).

Only ``None`` means "no subject": an empty subject is a subject like any other,
for every kind alike, so no kind can treat it as the workflow's.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from podium_contracts import StepRequested


class ScopeKind(enum.StrEnum):
    SUBJECT = "subject"
    PROJECT = "project"
    WORKFLOW = "workflow"
    SESSION = "session"


class ScopeForbidden(Exception):
    """The step named a scope its task is not entitled to."""


NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"
_NAME = re.compile(NAME)


@dataclass(frozen=True, slots=True)
class Scope:
    tenant: str
    kind: ScopeKind
    id: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "id": self.id}


class ScopeRef(BaseModel):
    """A scope as a step's input names it; ``id`` defaults to the task's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ScopeKind
    id: str | None = Field(default=None, pattern=NAME)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an entry goes: its scope, and the one subject who alone sees it there
    (``None``: everyone the scope admits)."""

    scope: Scope
    subject: str | None = None


def session_owner(step: StepRequested) -> str:
    if step.subject is not None:
        return f"subject:{step.subject}"
    return f"workflow:{step.workflow}"


def episode_placement(tenant: str, subject: str | None, workflow: str) -> Placement:
    """Where a finished task's episode goes: its workflow's scope, seen only by the
    task's subject if it had one. The workflow scope keeps a subject's episodes beside
    the shared ones (recalled as before, capped as before) without showing them to the
    workflow's other subjects."""
    return Placement(Scope(tenant, ScopeKind.WORKFLOW, workflow), subject)


def resolve(step: StepRequested, ref: ScopeRef) -> Scope:
    """The scope a reference names, if the step's task is entitled to it."""
    tenant = step.tenant
    if ref.kind is ScopeKind.SUBJECT:
        if step.subject is None:
            raise ScopeForbidden("the task has no subject, so it has no subject scope")
        if ref.id is not None and ref.id != step.subject:
            raise ScopeForbidden("a step may reach only its own subject's scope")
        return Scope(tenant, ScopeKind.SUBJECT, step.subject)
    if ref.kind is ScopeKind.WORKFLOW:
        if ref.id is not None and ref.id != step.workflow:
            raise ScopeForbidden("a step may reach only its own workflow's scope")
        return Scope(tenant, ScopeKind.WORKFLOW, step.workflow)
    if ref.id is None:
        raise ScopeForbidden(f"a {ref.kind.value} scope needs an id")
    if ref.kind is ScopeKind.SESSION:
        # '#' cannot occur in a session name, so the last '#' splits owner from session.
        return Scope(tenant, ScopeKind.SESSION, f"{session_owner(step)}#{ref.id}")
    return Scope(tenant, ScopeKind.PROJECT, ref.id)


def default_scope(step: StepRequested) -> Scope:
    """Where a step's memory goes when it names none: its subject, else its workflow."""
    if step.subject is not None:
        return Scope(step.tenant, ScopeKind.SUBJECT, step.subject)
    return Scope(step.tenant, ScopeKind.WORKFLOW, step.workflow)


def resolve_all(step: StepRequested, refs: list[ScopeRef] | None) -> list[Scope]:
    """Resolve every named scope (all or nothing), else the default one."""
    if not refs:
        return [default_scope(step)]
    return list(dict.fromkeys(resolve(step, r) for r in refs))


def is_valid_name(value: str) -> bool:
    return bool(_NAME.match(value))
