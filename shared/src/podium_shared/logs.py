"""Structured logging, set up in one place: JSON when not on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from podium_shared.secrets import redact, redact_event, redacted_excepthook
from podium_shared.telemetry import add_trace_ids


class RedactingFormatter(logging.Formatter):
    """The standard library's log lines (aiokafka, asyncio) masked as structlog's are."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    # sys.stderr as it is when a line is written, not when logging was configured: a
    # command run in-process (typer's CliRunner in tests, an embedding program) swaps
    # sys.stderr and closes its own, and a logger holding that one fails every later line.
    return structlog.PrintLogger(sys.stderr)


def configure(service: str, level: str = "INFO") -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            handler.setFormatter(RedactingFormatter("%(message)s"))
    sys.excepthook = redacted_excepthook
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # service, task_id, step_id
            add_trace_ids,  # trace_id, span_id of the current span
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_event,  # last before rendering: tracebacks included
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_stderr_logger,
    )
    structlog.contextvars.bind_contextvars(service=service)
