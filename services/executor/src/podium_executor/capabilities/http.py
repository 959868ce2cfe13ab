"""http.request: one real HTTP call through the shared httpx client, with a
timeout and a response size limit. Unsafe methods carry the step's
idempotency key in an ``Idempotency-Key`` header, so APIs that honour it
deduplicate retries.

Every connection it opens goes through the pool's egress policy
(``podium_executor.egress``): a refused address is a fatal ``egress_refused``.
Redirects are returned as they are unless the input asks to follow them; each hop
is then checked again, at most ``MAX_REDIRECTS`` of them."""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import AnyHttpUrl, BaseModel, Field, model_validator

from podium_executor.capabilities.base import Capability, Resources, StepContext
from podium_executor.egress import MAX_REDIRECTS, EgressRefused
from podium_executor.errors import ErrorType, fatal, retryable

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class HttpInput(BaseModel):
    url: AnyHttpUrl
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    max_bytes: int | None = Field(default=None, ge=1)
    raise_for_status: bool = True
    follow_redirects: bool = False

    @model_validator(mode="after")
    def _one_body(self) -> HttpInput:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give json or body, not both")
        return self


def host_of(url: str) -> str:
    return urlsplit(url).netloc or url


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without reading them all."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise fatal(ErrorType.CAPABILITY_ERROR, f"response of {declared} bytes is over {limit}")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise fatal(ErrorType.CAPABILITY_ERROR, f"response is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def status_error(status: int, where: str, detail: str = "") -> Exception | None:
    """The step error an HTTP status means, or None for success."""
    suffix = f": {detail[:300]}" if detail else ""
    if status == 429:
        return retryable(ErrorType.RATE_LIMITED, f"{where} answered 429{suffix}")
    if status == 408 or status >= 500:
        return retryable(ErrorType.UNAVAILABLE, f"{where} answered {status}{suffix}")
    if status >= 400:
        return fatal(ErrorType.CAPABILITY_ERROR, f"{where} answered {status}{suffix}")
    return None


def transport_error(exc: httpx.HTTPError, where: str) -> Exception:
    if isinstance(exc, httpx.TimeoutException):
        return retryable(ErrorType.TIMEOUT, f"{where}: {type(exc).__name__}")
    return retryable(ErrorType.UNAVAILABLE, f"{where}: {type(exc).__name__}: {exc}")


def make_http_request(resources: Resources) -> Capability:
    settings = resources.settings

    async def run(data: HttpInput, ctx: StepContext) -> Any:
        url = str(data.url)
        headers = dict(data.headers)
        if data.method in UNSAFE:
            headers.setdefault("Idempotency-Key", ctx.idempotency_key)
        limit = min(data.max_bytes or settings.http_max_bytes, settings.http_max_bytes)
        request = resources.http.build_request(
            data.method,
            url,
            headers=headers,
            json=data.json_body,
            content=data.body,
            timeout=data.timeout_s or settings.http_timeout_s,
        )
        try:
            response = await resources.http.send(
                request, stream=True, follow_redirects=data.follow_redirects
            )
            try:
                content = await read_limited(response, limit)
            finally:
                await response.aclose()
        except EgressRefused as exc:
            raise fatal(ErrorType.EGRESS_REFUSED, f"{data.method} {host_of(url)}: {exc}") from exc
        except httpx.TooManyRedirects as exc:
            raise fatal(
                ErrorType.CAPABILITY_ERROR,
                f"{data.method} {host_of(url)}: more than {MAX_REDIRECTS} redirects",
            ) from exc
        except httpx.HTTPError as exc:
            raise transport_error(exc, f"{data.method} {host_of(url)}") from exc
        text = content.decode(response.charset_encoding or "utf-8", errors="replace")
        if data.raise_for_status:
            error = status_error(response.status_code, f"{data.method} {host_of(url)}", text)
            if error is not None:
                raise error
        body: Any = text
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        return {"status": response.status_code, "headers": dict(response.headers), "body": body}

    return Capability(
        name="http.request",
        input_model=HttpInput,
        run=run,
        provider=lambda data: f"http:{host_of(str(data.url))}",
        description="one HTTP call with a timeout and a response size limit",
    )
