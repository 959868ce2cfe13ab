"""A future major version of TaskSubmitted, and the upgrade that teaches a reader it.

``podium.task.submitted.v2`` names the workflow as one object, ``{"name", "version"}``,
where v1 has two fields (``workflow``, ``workflow_version``): a type change, so breaking,
so a new major version (docs/contracts.md, "Making a breaking change"). A reader that has
not been upgraded dead-letters it (``unknown_type``); the upgrade registers the v2 type
with an upcaster that validates the v2 payload and hands the service code the v1 model it
already handles. Nothing in podium ships this: a real upgrade would put both in
``podium_contracts``. The integration test installs it into a restarted router with
``sitecustomize`` (tests/support/upgrade_v2/)."""

from __future__ import annotations

import dataclasses
from collections.abc import MutableMapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from podium_contracts import Contract, TaskSubmitted, asyncapi
from podium_contracts.envelope import REGISTRY


class WorkflowRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(min_length=1, max_length=200)
    version: int | None = Field(default=None, ge=1)


class TaskSubmittedV2(Contract):
    """What a v2 writer sends."""

    CE_TYPE: ClassVar[str] = "podium.task.submitted.v2"

    task_id: str = Field(min_length=1, max_length=200)
    workflow: WorkflowRef
    input: dict[str, Any] = Field(default_factory=dict)
    tenant: str = Field(default="default", min_length=1, max_length=200)


class TaskSubmittedFromV2(TaskSubmitted):
    """The upcaster: registered under the v2 type, it validates v2 and yields the v1 model."""

    @model_validator(mode="before")
    @classmethod
    def _upcast(cls, data: Any) -> Any:
        v2 = TaskSubmittedV2.model_validate(data)
        return {
            "task_id": v2.task_id,
            "workflow": v2.workflow.name,
            "workflow_version": v2.workflow.version,
            "input": v2.input,
            "tenant": v2.tenant,
        }


def install(registry: MutableMapping[str, type[Contract]] = REGISTRY) -> None:
    """The upgrade: this reader now reads podium.task.submitted.v2 too."""
    registry[TaskSubmittedV2.CE_TYPE] = TaskSubmittedFromV2


def declare_on_the_tasks_topic() -> None:
    """The upgrade's channel table: the tasks topic carries v2 too (as the release's
    CHANNELS would). Only for an upgraded process: it changes the module's table."""
    asyncapi.CHANNELS = tuple(
        dataclasses.replace(ch, ce_types=(*ch.ce_types, TaskSubmittedV2.CE_TYPE))
        if ch.id == "tasks"
        else ch
        for ch in asyncapi.CHANNELS
    )
