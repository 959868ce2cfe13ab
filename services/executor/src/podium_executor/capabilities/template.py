"""template: render text with Jinja2 in its sandbox (no attribute tricks, no
file access), strict about undefined names, bounded in memory and in time.

A template is untrusted code. Two bounds keep it from costing more than a step:

- **Memory, before allocating.** ``*`` and ``**`` are intercepted: a repeated
  string or list longer than ``MAX_OUTPUT``, a product of integers over
  ``MAX_INT_BITS`` bits and a power whose result would be are refused before
  Python builds them (``{{ 'x' * 10**7 }}`` used to build 10 MB before the size
  check; ``{{ 9**9**7 }}`` held the GIL for about 55 s). The output is counted
  as it streams, not after.
- **Time, for real.** The render runs in a worker process, not a thread: when
  the step's timeout cancels it, the worker is killed (a thread would keep
  burning CPU in a nested ``range`` loop while the retry starts another) and
  the executor's event loop never waits on it. Idle workers are kept warm.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import operator
import resource
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, Field

from podium_executor.capabilities.base import StepContext, capability
from podium_executor.errors import CapabilityError, ErrorType, fatal, retryable

MAX_OUTPUT = 1_000_000
# An integer this wide prints as about 10,000 digits: more than any honest template needs.
MAX_INT_BITS = 32_768
MAX_IDLE_WORKERS = 4
# A worker's heap (RLIMIT_DATA): what no bound above foresaw (``"%0300000000d"|format(1)``)
# fails with MemoryError in the worker, not by the kernel's OOM killer on the executor.
WORKER_MAX_DATA_BYTES = 512 << 20


def _size(value: Any) -> int | None:
    """The length of a sequence ``*`` would repeat; None for anything else."""
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


class BoundedSandbox(SandboxedEnvironment):
    """The sandbox with ``*`` and ``**`` refusing results over the bounds."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            _check_product(left, right)
            return operator.mul(left, right)
        if operator_ == "%":
            if isinstance(left, str):  # a width like %0300000000d sizes it before any check
                raise SecurityError("printf formatting with %; use ~ or the format() method")
            return operator.mod(left, right)
        _check_power(left, right)
        return operator.pow(left, right)


def _check_product(left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        size = _size(seq)
        if size is not None and isinstance(times, int) and size * times > MAX_OUTPUT:
            raise SecurityError(f"a repetition of {size * times} items, over {MAX_OUTPUT}")
    if isinstance(left, int) and isinstance(right, int):
        bits = left.bit_length() + right.bit_length()
        if bits > MAX_INT_BITS:
            raise SecurityError(f"a product of about {bits} bits, over {MAX_INT_BITS}")


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        bits = exponent * (abs(base).bit_length() - 1)  # at least this many
        if bits > MAX_INT_BITS:
            raise SecurityError(f"a power of at least {bits} bits, over {MAX_INT_BITS}")


_env = BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False)


class TemplateInput(BaseModel):
    template: str = Field(max_length=100_000)
    values: dict[str, Any] = Field(default_factory=dict)


def render(source: str, values: dict[str, Any]) -> str:
    """Render ``source``; stops as soon as the output passes ``MAX_OUTPUT``."""
    try:
        parts: list[str] = []
        size = 0
        for part in _env.from_string(source).generate(values):
            size += len(part)
            if size > MAX_OUTPUT:
                raise fatal(
                    ErrorType.CAPABILITY_ERROR, f"template: output over {MAX_OUTPUT} characters"
                )
            parts.append(part)
    except jinja2.TemplateSyntaxError as exc:
        raise fatal(ErrorType.INVALID_INPUT, f"template: line {exc.lineno}: {exc.message}") from exc
    except jinja2.UndefinedError as exc:
        raise fatal(ErrorType.INVALID_INPUT, f"template: {exc.message}") from exc
    except SecurityError as exc:
        raise fatal(ErrorType.INVALID_INPUT, f"template: not allowed: {exc}") from exc
    return "".join(parts)


def _serve(conn: Connection) -> None:
    """A worker's loop: (source, values) in; ("ok", text) or ("error", ...) out."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = (
        WORKER_MAX_DATA_BYTES
        if hard == resource.RLIM_INFINITY
        else min(hard, WORKER_MAX_DATA_BYTES)
    )
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    while True:
        try:
            source, values = conn.recv()
        except EOFError:
            return
        try:
            reply: tuple[Any, ...] = ("ok", render(source, values))
        except CapabilityError as exc:
            reply = ("error", exc.error.type, exc.error.message, exc.error.error_class)
        except (OverflowError, ZeroDivisionError, MemoryError, ValueError, TypeError) as exc:
            reply = ("error", ErrorType.INVALID_INPUT, f"template: {exc!r}", "fatal")
        except Exception as exc:
            reply = ("error", ErrorType.CAPABILITY_ERROR, f"template: {exc!r}", "fatal")
        conn.send(reply)


class _Worker:
    def __init__(self, ctx: BaseContext) -> None:
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(  # type: ignore[attr-defined]
            target=_serve, args=(child,), daemon=True, name="podium-template"
        )
        self.process.start()
        child.close()

    def kill(self) -> None:
        self.conn.close()
        self.process.kill()
        self.process.join(5)


class Renderer:
    """Renders in worker processes; a render cancelled (the step's timeout) kills
    its worker, so nothing keeps running after the step has failed."""

    def __init__(self, max_idle: int = MAX_IDLE_WORKERS) -> None:
        self._ctx: BaseContext | None = None
        self._idle: list[_Worker] = []
        self.max_idle = max_idle

    def _context(self) -> BaseContext:
        if self._ctx is None:
            # forkserver: the executor has threads (a fork of it could inherit a held
            # lock); workers start from a small server with this module imported.
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            self._ctx = ctx
        return self._ctx

    async def render(self, source: str, values: dict[str, Any]) -> str:
        worker = self._idle.pop() if self._idle else _Worker(self._context())
        loop = asyncio.get_running_loop()
        fd = worker.conn.fileno()
        try:
            worker.conn.send((source, values))
            readable: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not readable.done():
                    readable.set_result(None)

            loop.add_reader(fd, wake)
            try:
                await readable
            finally:
                loop.remove_reader(fd)
            reply = worker.conn.recv()
        except (EOFError, OSError) as exc:
            worker.kill()
            raise retryable(ErrorType.UNAVAILABLE, f"template: its worker died: {exc!r}") from exc
        except BaseException:  # cancelled: the step's timeout, or shutdown
            worker.kill()
            raise
        if len(self._idle) < self.max_idle:
            self._idle.append(worker)
        else:
            worker.kill()
        if reply[0] == "ok":
            return str(reply[1])
        _, type_, message, error_class = reply
        raise CapabilityError(type_, message, retryable=error_class == "retryable")


_renderer = Renderer()


@capability("template")
async def template(data: TemplateInput, _ctx: StepContext) -> Any:
    """Render a Jinja2 template with values; returns {"text": ...}."""
    return {"text": await _renderer.render(data.template, data.values)}
