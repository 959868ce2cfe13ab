"""What every `podium` command shares: its Typer app, the one error line and the exit
codes, settings loading, and output as text or JSON.

The command modules (cli.py and the cli_*.py beside it) import only this, typer and the
standard library when they load; everything else is imported by a command when it runs,
so `podium --help` and `podium X --help` answer without loading SQLAlchemy, aiokafka,
OpenTelemetry or the services (tests/unit/test_cli_startup.py keeps it so). cli.py
imports the other command modules; they import this one, never cli.py.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:
    from collections.abc import Callable

    from typer._click import Context  # typer's own click, which its commands subclass

    from podium.api_client import ApiClient
    from podium_shared import Settings

# Exit codes a script can branch on (README, "Exit codes"). A task that ended badly and a
# wait that ran out are different facts: the first is final, the second may still finish.
EXIT_TASK_FAILED = 1  # the task failed or was cancelled (and any other error)
EXIT_USAGE = 2  # a bad argument, setting or address: nothing was done
EXIT_NO_OUTCOME = 3  # `submit --wait`: no outcome within --timeout; the task may still run

T = TypeVar("T")

JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def fail(message: str, code: int = EXIT_TASK_FAILED) -> NoReturn:
    """Say what went wrong in one line on stderr and exit with ``code``."""
    from podium_shared.secrets import redact

    print(f"podium: error: {redact(message)}", file=sys.stderr)
    raise SystemExit(code)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON, the output of every --json."""
    import orjson

    from podium_shared.secrets import redact_value

    # A last mask over what scripts read: errors and history carry provider messages.
    data = redact_value(data)
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def emit(data: Any, as_json: bool, text: str) -> None:
    """Print ``data`` as JSON with --json, else ``text``."""
    if as_json:
        print_json(data)
    else:
        from podium_shared.secrets import redact

        print(redact(text))


def load_settings() -> Settings:
    """The ``PODIUM_*`` settings; a bad one is a usage error naming the variable."""
    from pydantic import ValidationError

    from podium_shared import Settings
    from podium_shared.secrets import register_settings

    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"bad setting PODIUM_{str(first['loc'][0]).upper()}: {first['msg']}", EXIT_USAGE)
    register_settings(settings)
    return settings


def kafka_settings() -> Settings:
    """The settings of a command that talks to a running stack: a bootstrap is required."""
    settings = load_settings()
    if not settings.kafka_bootstrap:
        fail(
            "PODIUM_KAFKA_BOOTSTRAP is not set (start `podium up` and export what it prints)",
            EXIT_USAGE,
        )
    return settings


def call_api(work: Callable[[ApiClient], T]) -> T:
    """``work(client)`` against the operators' API (PODIUM_API_URL and PODIUM_API_TOKEN,
    else the local stack's); an error it answers is the CLI's one line."""
    import os

    from podium.api_client import ApiClient, ApiError, resolve_target

    settings = load_settings()
    try:
        with ApiClient(resolve_target(os.environ, settings.home)) as client:
            return work(client)
    except ApiError as exc:
        fail(str(exc), exc.code)


def validated(build: Callable[[], T], what: str) -> T:
    """``build()``, or a usage error naming the first value it refused after ``what``."""
    from pydantic import ValidationError

    from podium.cli_errors import invalid

    try:
        return build()
    except ValidationError as exc:
        fail(f"{what}{invalid(exc)}", EXIT_USAGE)


def set_up_logging() -> None:
    """The CLI's logging: structured lines on stderr, warnings and worse."""
    from podium_shared.logs import configure

    configure("cli", "WARNING")
    # aiokafka logs each failed connection attempt; the CLI's one error line says it once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").addFilter(_drop_unretrieved_connection_errors)


def _drop_unretrieved_connection_errors(record: logging.LogRecord) -> bool:
    """aiokafka leaves the read future of a connection the broker cut (a refused TLS
    client certificate among them) with its exception unretrieved; asyncio reports it as
    a traceback when the future is collected, after the CLI's one line said why."""
    exc = record.exc_info[1] if record.exc_info else None
    unretrieved = str(record.msg).startswith("Future exception was never retrieved")
    return not (unretrieved and isinstance(exc, OSError))


class Command(TyperCommand):
    """A podium command: logging is set up when it runs, once its arguments parse, so
    that `podium X --help` and a usage error import nothing heavy."""

    def invoke(self, ctx: Context) -> Any:
        set_up_logging()
        return super().invoke(ctx)


class App(typer.Typer):
    """A group of podium commands: plain help and errors (no rich markup, no pretty
    tracebacks, no shell completion), its help when called bare, `Command` commands."""

    def __init__(self, name: str, help: str) -> None:
        super().__init__(
            name=name,
            help=help,
            no_args_is_help=True,
            add_completion=False,
            pretty_exceptions_enable=False,
            rich_markup_mode=None,
        )

    def command(  # type: ignore[override]
        self, name: str | None = None, *, cls: type[TyperCommand] = Command, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return super().command(name, cls=cls, **kwargs)
