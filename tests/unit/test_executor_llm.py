"""llm.chat against a local OpenAI-compatible server (a real HTTP server in a
thread), including the ways a provider can answer badly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from podium_contracts import StepCompleted, StepFailed, StepRequested
from podium_executor.capabilities import Resources, builtin_capabilities
from podium_executor.service import Executor
from podium_executor.settings import ExecutorSettings, ModelPrice
from podium_shared import Topics
from tests.support.fake_openai import FakeOpenAI

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def chat(content: str, **kw: Any) -> StepRequested:
    return StepRequested(
        task_id="t1",
        step_id="chat",
        workflow="w",
        capability="llm.chat",
        pool="default",
        input={"messages": [{"role": "user", "content": content}], **kw},
        idempotency_key="t1/chat",
    )


async def run(settings: ExecutorSettings, step: StepRequested) -> StepCompleted | StepFailed:
    async with httpx.AsyncClient() as http:
        caps = {c.name: c for c in builtin_capabilities(Resources(settings, http))}
        return await Executor(caps, Topics("t")).run_step(step)


def settings_for(server: FakeOpenAI, **kw: Any) -> ExecutorSettings:
    return ExecutorSettings(
        llm_base_url=server.base_url, llm_model="gpt-4o-mini", llm_api_key="sk-test", **kw
    )


async def test_chat_returns_content_usage_and_cost(fake_openai: FakeOpenAI) -> None:
    out = await run(settings_for(fake_openai), chat("three little words"))
    assert isinstance(out, StepCompleted), out
    assert out.output["content"] == "echo: three little words"
    assert out.output["model"] == "gpt-4o-mini" and out.output["finish_reason"] == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (3, 2)
    assert out.usage.cost_usd == pytest.approx((3 * 0.15 + 2 * 0.60) / 1e6)
    sent = fake_openai.requests[-1]
    assert sent["headers"]["Authorization"] == "Bearer sk-test"
    assert sent["headers"]["Idempotency-Key"] == "t1/chat"
    assert sent["model"] == "gpt-4o-mini"


async def test_price_table_from_settings_and_model_from_the_step(fake_openai: FakeOpenAI) -> None:
    settings = settings_for(fake_openai, llm_prices={"house": ModelPrice(prompt=1e6, completion=0)})
    out = await run(settings, chat("a b", model="house", max_tokens=5, temperature=0))
    assert isinstance(out, StepCompleted), out
    assert out.usage.cost_usd == pytest.approx(2.0)
    assert fake_openai.requests[-1]["max_tokens"] == 5
    unpriced = await run(settings, chat("a b", model="unknown-model"))
    assert isinstance(unpriced, StepCompleted) and unpriced.usage.cost_usd == 0.0


@pytest.mark.parametrize(
    ("content", "error_type", "error_class", "says"),
    [
        ("malformed", "unavailable", "retryable", "not JSON"),
        ("badshape", "capability_error", "fatal", "not a chat completion"),
        ("slowdown", "rate_limited", "retryable", "429"),
        ("broken", "unavailable", "retryable", "500"),
    ],
)
async def test_bad_answers_are_classified(
    fake_openai: FakeOpenAI, content: str, error_type: str, error_class: str, says: str
) -> None:
    out = await run(settings_for(fake_openai), chat(content))
    assert isinstance(out, StepFailed), out
    assert (out.error.type, out.error.error_class) == (error_type, error_class)
    assert says in out.error.message


async def test_unreachable_and_unconfigured_provider(fake_openai: FakeOpenAI) -> None:
    gone = ExecutorSettings(llm_base_url="http://127.0.0.1:9/v1", llm_model="m")
    out = await run(gone, chat("hi"))
    assert isinstance(out, StepFailed) and out.error.type == "unavailable"
    out = await run(ExecutorSettings(), chat("hi"))
    assert isinstance(out, StepFailed) and "PODIUM_EXECUTOR_LLM_BASE_URL" in out.error.message
    assert out.error.error_class == "fatal"
    wrong_path = ExecutorSettings(llm_base_url=fake_openai.base_url + "/nope", llm_model="m")
    out = await run(wrong_path, chat("hi"))
    assert isinstance(out, StepFailed) and out.error.type == "invalid_input"


async def test_the_routed_or_fallback_model_wins(fake_openai: FakeOpenAI) -> None:
    step = chat("hello", model="input-model").model_copy(update={"model": "fallback-model"})
    outcome = await run(settings_for(fake_openai), step)
    assert isinstance(outcome, StepCompleted), outcome
    assert fake_openai.requests[-1]["model"] == "fallback-model"
