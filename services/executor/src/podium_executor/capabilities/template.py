"""template: render text with Jinja2 in its sandbox (no attribute tricks, no
file access), strict about undefined names."""

from __future__ import annotations

import asyncio
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, Field

from podium_executor.capabilities.base import StepContext, capability
from podium_executor.errors import ErrorType, fatal

MAX_OUTPUT = 1_000_000

_env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


class TemplateInput(BaseModel):
    template: str = Field(max_length=100_000)
    values: dict[str, Any] = Field(default_factory=dict)


def render(source: str, values: dict[str, Any]) -> str:
    try:
        text = _env.from_string(source).render(values)
    except jinja2.TemplateSyntaxError as exc:
        raise fatal(ErrorType.INVALID_INPUT, f"template: line {exc.lineno}: {exc.message}") from exc
    except jinja2.UndefinedError as exc:
        raise fatal(ErrorType.INVALID_INPUT, f"template: {exc.message}") from exc
    except SecurityError as exc:
        raise fatal(ErrorType.INVALID_INPUT, f"template: not allowed: {exc}") from exc
    if len(text) > MAX_OUTPUT:
        raise fatal(ErrorType.CAPABILITY_ERROR, f"template: output over {MAX_OUTPUT} characters")
    return text


@capability("template")
async def template(data: TemplateInput, _ctx: StepContext) -> Any:
    """Render a Jinja2 template with values; returns {"text": ...}."""
    # In a thread: a heavy template must not block the consumer's heartbeats.
    return {"text": await asyncio.to_thread(render, data.template, data.values)}
