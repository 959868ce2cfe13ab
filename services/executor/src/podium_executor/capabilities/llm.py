"""llm.chat: any OpenAI-compatible chat completions API over httpx.

Base URL, model and key come from settings (``PODIUM_EXECUTOR_LLM_*``); the step may
name another model. Usage (prompt and completion tokens) is reported with its
cost from the price table (USD per million tokens; settings override the
defaults). A response that is not JSON is retryable (``unavailable``: a proxy
or a truncated body); JSON of the wrong shape is fatal (``capability_error``:
the server does not speak the protocol)."""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from podium_contracts import Usage
from podium_executor.capabilities.base import Capability, Resources, Result, StepContext
from podium_executor.capabilities.http import host_of, status_error, transport_error
from podium_executor.errors import ErrorType, fatal, retryable
from podium_executor.settings import ModelPrice

# USD per million tokens, for models whose list price is well known; extend or
# override with PODIUM_EXECUTOR_LLM_PRICES. A model not in the table costs 0 (reported).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(prompt=2.50, completion=10.00),
    "gpt-4o-mini": ModelPrice(prompt=0.15, completion=0.60),
}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


# What would set the provider's credentials or address: those come from the
# operator's settings only, never from a task (which could otherwise send the
# operator's key to a host of its choosing, or bill its calls to a key of its own).
OPERATOR_ONLY = frozenset({"api_key", "apikey", "authorization", "headers", "base_url", "api_base"})


class ChatInput(BaseModel):
    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            named = sorted(k for k in data if str(k).lower().replace("-", "_") in OPERATOR_ONLY)
            if named:
                raise ValueError(
                    f"{', '.join(named)} cannot be set by a task: the provider's key and "
                    "address come from PODIUM_EXECUTOR_LLM_API_KEY(_FILE) and "
                    "PODIUM_EXECUTOR_LLM_BASE_URL"
                )
        return data


class _Reply(BaseModel):
    role: str = "assistant"
    content: str | None = None


class _Choice(BaseModel):
    message: _Reply
    finish_reason: str | None = None


class _Usage(BaseModel):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


class _Completion(BaseModel):
    model: str | None = None
    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage = Field(default_factory=_Usage)


def cost_usd(prices: dict[str, ModelPrice], model: str, usage: _Usage) -> float:
    price = prices.get(model)
    if price is None:
        return 0.0
    return (usage.prompt_tokens * price.prompt + usage.completion_tokens * price.completion) / 1e6


def parse_completion(response: httpx.Response, where: str) -> _Completion:
    try:
        raw = response.json()
    except ValueError as exc:
        raise retryable(
            ErrorType.UNAVAILABLE, f"{where}: response is not JSON: {response.text[:200]!r}"
        ) from exc
    try:
        return _Completion.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(map(str, first["loc"])) or "body"
        raise fatal(
            ErrorType.CAPABILITY_ERROR,
            f"{where}: not a chat completion: {first['msg']} at {loc}",
        ) from exc


def make_llm_chat(resources: Resources) -> Capability:
    settings = resources.settings
    prices = {**DEFAULT_PRICES, **settings.llm_prices}
    base_url = (settings.llm_base_url or "").rstrip("/")

    async def run(data: ChatInput, ctx: StepContext) -> Result:
        if not base_url:
            raise fatal(
                ErrorType.CAPABILITY_ERROR, "llm.chat: PODIUM_EXECUTOR_LLM_BASE_URL is not set"
            )
        # The routed (or fallback) model wins over the input's, which wins over the default.
        model = ctx.model or data.model or settings.llm_model
        if not model:
            raise fatal(
                ErrorType.INVALID_INPUT, "llm.chat: no model (set PODIUM_EXECUTOR_LLM_MODEL)"
            )
        body: dict[str, Any] = {
            "model": model,
            "messages": [m.model_dump() for m in data.messages],
        }
        if data.temperature is not None:
            body["temperature"] = data.temperature
        if data.max_tokens is not None:
            body["max_tokens"] = data.max_tokens
        headers = {"Idempotency-Key": ctx.idempotency_key}
        if settings.llm_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.llm_api_key.get_secret_value()}"
        where = f"llm {host_of(base_url)}"
        try:
            response = await resources.operator_http.post(
                f"{base_url}/chat/completions",
                json=body,
                headers=headers,
                timeout=settings.llm_timeout_s,
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, where) from exc
        if response.status_code in (400, 404, 422):
            raise fatal(
                ErrorType.INVALID_INPUT,
                f"{where} answered {response.status_code}: {response.text[:300]}",
            )
        error = status_error(response.status_code, where, response.text)
        if error is not None:
            raise error
        completion = parse_completion(response, where)
        choice = completion.choices[0]
        used = completion.model or model
        usage = Usage(
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            cost_usd=cost_usd(prices, used, completion.usage),
        )
        return Result(
            output={
                "content": choice.message.content,
                "role": choice.message.role,
                "model": used,
                "finish_reason": choice.finish_reason,
                "usage": usage.model_dump(),
            },
            usage=usage,
        )

    return Capability(
        name="llm.chat",
        input_model=ChatInput,
        run=run,
        provider=lambda _data: f"llm:{host_of(base_url)}",
        description="chat completion from an OpenAI-compatible API",
    )
