"""Tracing, set up in one place: one task is one trace across every service.

The W3C context travels in each Kafka message's ``traceparent`` (and
``tracestate``) header. A consume loop opens a ``process <topic>`` span as the
child of the message's context (``start_consume``) and makes it current while
the handler runs (``activate``); whatever the handler publishes through the
outbox is stamped with the *current* span's context (``outgoing_context``), and
the relay opens a ``publish <topic>`` span as the child of that stored context
and injects its own (``start_publish``), so the consumer on the other side
continues the same trace, however long the row waited::

    upstream submit ─▶ router: process podium.tasks.v1
                         └─ router.route ─▶ publish podium.steps.default.v1
                                              └─ executor: process … └─ executor.call
                                                 └─ publish podium.step-results.v1 ─▶ router …

Export (``PODIUM_TRACING``): ``local`` (the default) writes JSON lines under
``PODIUM_HOME/spans/<service>-<pid>.jsonl`` for ``podium trace``; ``otlp`` sends
to the collector named by the standard ``OTEL_EXPORTER_OTLP_*`` variables (the
default when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set); ``off`` creates no span at
all and only carries the incoming context on.

Every hook catches its own errors: tracing can never break a send or a consume.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import orjson
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from podium_contracts import DLQ_HEADER_PREFIX, TRACE_HEADERS, TRACEPARENT, TRACESTATE, Event
from podium_shared.secrets import open_private, redact, redact_value, sensitive

log = structlog.get_logger(__name__)

TaskAttr = "podium.task_id"
StepAttr = "podium.step_id"
Mode = Literal["off", "local", "otlp"]
AttrValue = str | bool | int | float | Sequence[str] | None

_PROPAGATOR = TraceContextTextMapPropagator()


class TelemetrySettings(BaseSettings):
    """``PODIUM_TRACING`` and the metrics endpoint; OTLP itself reads ``OTEL_*``."""

    model_config = SettingsConfigDict(env_prefix="PODIUM_", extra="ignore")

    tracing: Mode | None = Field(
        default=None, description="off | local | otlp; unset: otlp when an OTLP endpoint is set"
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="0: no /metrics endpoint")
    metrics_host: str = Field(default="127.0.0.1", description="address /metrics listens on")

    def tracing_mode(self, environ: Mapping[str, str] | None = None) -> Mode:
        if self.tracing is not None:
            return self.tracing
        env = os.environ if environ is None else environ
        otlp = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        return "otlp" if otlp else "local"


@dataclass
class _State:
    tracer: trace.Tracer | None = None
    provider: TracerProvider | None = None


_state = _State()


def _swallow(what: str) -> None:
    log.debug("telemetry hook failed", hook=what, exc_info=True)


# -- set-up ----------------------------------------------------------------------------------


def spans_dir(home: Path) -> Path:
    return home / "spans"


class JsonLinesExporter(SpanExporter):
    """Appends finished spans as JSON lines to one file (what ``podium trace`` reads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = b"".join(orjson.dumps(span_dict(s)) + b"\n" for s in spans)
        with self._lock:
            if self._file is None:
                self._file = open_private(self.path, "ab")
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class RedactingExporter(SpanExporter):
    """Masks secrets (``podium_shared.secrets.redact``) in every attribute, event and
    status message of a span before ``inner`` exports it, wherever it goes: an
    exception's message and stack trace are recorded on the span as they were raised."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            spans = [redacted_span(s) for s in spans]
        except Exception:
            # Never export a span unmasked; dropping it costs a trace, not a secret.
            _swallow("redact")
            return SpanExportResult.FAILURE
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def redacted_span(s: ReadableSpan) -> ReadableSpan:
    """A copy of ``s`` with secrets masked in its attributes, events and status
    (``s`` itself when nothing in it needs a mask, as for nearly every span)."""
    texts = [v for v in (s.attributes or {}).values() if isinstance(v, str)]
    texts += [v for e in s.events for v in (e.attributes or {}).values() if isinstance(v, str)]
    if s.status.description:
        texts.append(s.status.description)
    if not sensitive("\n".join(texts)):  # one test of all of them: the common case
        return s
    status = s.status
    if status.description:
        status = Status(status.status_code, redact(status.description))
    return ReadableSpan(
        name=s.name,
        context=s.get_span_context(),
        parent=s.parent,
        resource=s.resource,
        attributes=redact_value(dict(s.attributes or {})),
        events=[
            SpanEvent(e.name, redact_value(dict(e.attributes or {})), e.timestamp) for e in s.events
        ],
        links=s.links,
        kind=s.kind,
        status=status,
        start_time=s.start_time,
        end_time=s.end_time,
        instrumentation_scope=s.instrumentation_scope,
    )


def span_dict(s: ReadableSpan) -> dict[str, Any]:
    """One finished span as the plain JSON ``podium trace`` reads."""
    ctx = s.get_span_context()
    parent = s.parent
    return {
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "remote_parent": bool(parent and parent.is_remote),
        "name": s.name,
        "kind": s.kind.name,
        "service": str(s.resource.attributes.get("service.name", "")),
        "start_ns": s.start_time,
        "end_ns": s.end_time,
        "status": s.status.status_code.name,
        "status_message": s.status.description,
        "attributes": dict(s.attributes or {}),
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in s.events
        ],
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in s.links
        ],
    }


def configure_tracing(
    service: str,
    home: Path,
    settings: TelemetrySettings | None = None,
    *,
    exporter: SpanExporter | None = None,
    processor: SpanProcessor | None = None,
) -> TracerProvider | None:
    """Set up this process's tracer for ``service``; returns None when tracing is off.

    ``exporter`` or ``processor`` replace the configured export (tests pass an
    in-memory exporter, exported synchronously)."""
    settings = settings or TelemetrySettings()
    mode = settings.tracing_mode()
    shutdown()
    if mode == "off" and exporter is None and processor is None:
        return None
    resource = Resource.create(
        {"service.name": service, "service.instance.id": f"{service}-{os.getpid()}"}
    )
    provider = TracerProvider(resource=resource)
    if processor is not None:
        provider.add_span_processor(processor)
    elif exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(RedactingExporter(exporter)))
    elif mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(RedactingExporter(OTLPSpanExporter())))
    else:
        path = spans_dir(home) / f"{service}-{os.getpid()}.jsonl"
        # A short delay so `podium trace` sees spans moments after the task ends.
        provider.add_span_processor(
            BatchSpanProcessor(
                RedactingExporter(JsonLinesExporter(path)), schedule_delay_millis=200
            )
        )
    install(provider)
    atexit.register(shutdown)
    log.debug("tracing configured", mode=mode)
    return provider


def install(provider: TracerProvider | None) -> None:
    """Use this provider's tracer for podium's spans (None: tracing off)."""
    _state.provider = provider
    _state.tracer = provider.get_tracer("podium") if provider is not None else None


def enabled() -> bool:
    return _state.tracer is not None


def shutdown() -> None:
    """Flush and close the exporter; tracing is off afterwards."""
    provider, _state.provider, _state.tracer = _state.provider, None, None
    if provider is not None:
        try:
            provider.shutdown()
        except Exception:
            _swallow("shutdown")


# -- context in headers ----------------------------------------------------------------------


def header_context(headers: Sequence[tuple[str, bytes | None]]) -> tuple[str | None, str | None]:
    """The ``traceparent`` and ``tracestate`` of Kafka headers."""
    tp = ts = None
    for k, v in headers:
        if v is None:
            continue
        key = k.lower()
        if key == TRACEPARENT:
            tp = v.decode("latin-1")
        elif key == TRACESTATE:
            ts = v.decode("latin-1")
    return tp, ts


def extract(traceparent: str | None, tracestate: str | None = None) -> otel_context.Context:
    """An OTel context whose parent is the given W3C context (empty if none or invalid)."""
    carrier = {TRACEPARENT: traceparent} if traceparent else {}
    if traceparent and tracestate:
        carrier[TRACESTATE] = tracestate
    return _PROPAGATOR.extract(carrier, context=otel_context.Context())


def inject(span: Span) -> tuple[str | None, str | None]:
    """The W3C ``traceparent`` and ``tracestate`` of a span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT), carrier.get(TRACESTATE)


def outgoing_context(
    traceparent: str | None, tracestate: str | None = None
) -> tuple[str | None, str | None]:
    """The context to stamp on a message published now: the current span's, else
    the incoming one (tracing off, or nothing current)."""
    try:
        span = trace.get_current_span()
        if span.get_span_context().is_valid:
            return inject(span)
    except Exception:
        _swallow("outgoing_context")
    return traceparent, tracestate


def current_ids() -> dict[str, str]:
    """trace_id and span_id of the current span, for log lines."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


def add_trace_ids(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: every log line carries the current trace and span id."""
    if "trace_id" not in event_dict:
        try:
            event_dict.update(current_ids())
        except Exception:
            _swallow("add_trace_ids")
    return event_dict


# -- spans -----------------------------------------------------------------------------------


def _attrs(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _payload_ids(event: Event | None) -> dict[str, str]:
    if event is None:
        return {}
    out = {}
    task_id = getattr(event.payload, "task_id", None)
    if task_id is not None:
        out["task_id"] = str(task_id)
    step_id = getattr(event.payload, "step_id", None)
    if step_id is not None:
        out["step_id"] = str(step_id)
    return out


def start_consume(record: Any, event: Event | None, *, group: str, service: str) -> Span | None:
    """Open the ``process <topic>`` span of one consumed record (not made current),
    the child of the record's context."""
    tracer = _state.tracer
    if tracer is None:
        return None
    try:
        if event is not None:
            tp, ts = event.envelope.traceparent, event.envelope.tracestate
        else:
            tp, ts = header_context(record.headers or ())
        ids = _payload_ids(event)
        attributes = _attrs(
            {
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.consumer.group.name": group,
                "messaging.message.id": event.envelope.id if event else None,
                "cloudevents.event_type": event.envelope.type if event else None,
                TaskAttr: ids.get("task_id"),
                StepAttr: ids.get("step_id"),
                "podium.attempt": getattr(event.payload, "attempt", None) if event else None,
            }
        )
        return tracer.start_span(
            f"process {record.topic}",
            context=extract(tp, ts),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
    except Exception:
        _swallow("start_consume")
        return None


@contextlib.contextmanager
def activate(span: Span | None, event: Event | None = None) -> Iterator[None]:
    """Make ``span`` current (without ending it) and bind the message's task_id,
    step_id and trace id to every log line written meanwhile."""
    token = tokens = None
    try:
        if span is not None:
            token = otel_context.attach(trace.set_span_in_context(span))
        ids: dict[str, Any] = _payload_ids(event)
        if span is None and event is not None and event.envelope.traceparent:
            ids["trace_id"] = event.envelope.traceparent[3:35]  # tracing off: the incoming id
        tokens = structlog.contextvars.bind_contextvars(**ids) if ids else None
    except Exception:
        _swallow("activate")
    try:
        yield
    finally:
        try:
            if tokens:
                structlog.contextvars.reset_contextvars(**tokens)
            if token is not None:
                otel_context.detach(token)
        except Exception:
            _swallow("deactivate")


def end(span: Span | None, error: BaseException | str | None = None) -> None:
    """End a span, marking it failed with ``error`` if given."""
    if span is None:
        return
    try:
        if error is not None:
            _fail(span, error)
        span.end()
    except Exception:
        _swallow("end")


def _fail(span: Span, error: BaseException | str) -> None:
    if isinstance(error, BaseException):
        span.set_attribute("error.type", type(error).__name__)
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)[:500]))
    else:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A child span of the current one, current inside the block. Yields a no-op
    span when tracing is off; an exception leaving the block marks it failed."""
    tracer = _state.tracer
    current: Span = INVALID_SPAN
    token = None
    if tracer is not None:
        try:
            current = tracer.start_span(name, attributes=_attrs(attributes))
            token = otel_context.attach(trace.set_span_in_context(current))
        except Exception:
            _swallow("span")
            current = INVALID_SPAN
    try:
        yield current
    except BaseException as exc:
        with contextlib.suppress(Exception):
            if current is not INVALID_SPAN:
                _fail(current, exc)
        raise
    finally:
        try:
            if token is not None:
                otel_context.detach(token)
            if current is not INVALID_SPAN:
                current.end()
        except Exception:
            _swallow("span end")


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (nothing when tracing is off)."""
    if _state.tracer is None:
        return
    try:
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attributes(_attrs(attributes))
    except Exception:
        _swallow("annotate")


def event(name: str, **attributes: Any) -> None:
    """Add an event to the current span (nothing when tracing is off)."""
    if _state.tracer is None:
        return
    try:
        current = trace.get_current_span()
        if current.is_recording():
            current.add_event(name, _attrs(attributes))
    except Exception:
        _swallow("event")


def mark_failed(error_type: str, message: str = "") -> None:
    """Mark the current span failed without an exception (a step reported an error)."""
    if _state.tracer is None:
        return
    try:
        current = trace.get_current_span()
        if current.is_recording():
            current.set_attribute("error.type", error_type)
            current.set_status(Status(StatusCode.ERROR, message[:500] or error_type))
    except Exception:
        _swallow("mark_failed")


def start_publish(
    topic: str, headers: list[tuple[str, bytes]], key: bytes | None = None
) -> tuple[Span | None, list[tuple[str, bytes]]]:
    """Open the ``publish <topic>`` span of an outbox row, the child of the context
    stored with the row, and return the headers to send: with the publish span's
    context, except for DLQ records, whose original headers stay untouched."""
    tracer = _state.tracer
    if tracer is None:
        return None, headers
    try:
        tp, ts = header_context(headers)
        ce_id = next((v.decode("latin-1") for k, v in headers if k == "ce_id"), None)
        dlq = any(k.startswith(DLQ_HEADER_PREFIX) for k, _ in headers)
        send = tracer.start_span(
            f"publish {topic}",
            context=extract(tp, ts),
            kind=SpanKind.PRODUCER,
            attributes=_attrs(
                {
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": topic,
                    "messaging.message.id": ce_id,
                    "messaging.kafka.message.key": key.decode("utf-8", "replace") if key else None,
                    "podium.dead_letter": dlq or None,
                }
            ),
        )
        if dlq:
            return send, headers
        new_tp, new_ts = inject(send)
        out = [(k, v) for k, v in headers if k.lower() not in TRACE_HEADERS]
        if new_tp:
            out.append((TRACEPARENT, new_tp.encode()))
        if new_ts:
            out.append((TRACESTATE, new_ts.encode()))
        return send, out
    except Exception:
        _swallow("start_publish")
        return None, headers


def end_when_sent(span: Span | None, future: Any) -> None:
    """End a publish span when the broker acknowledged (or refused) the record."""
    if span is None:
        return

    def done(f: Any) -> None:
        end(span, None if f.cancelled() or f.exception() is None else f.exception())

    try:
        future.add_done_callback(done)
    except Exception:
        _swallow("end_when_sent")
        end(span)


# -- hooks for the recovery service ----------------------------------------------------------
# Span events only: recovery counts its retries and abandoned steps itself
# (``metrics.retry_scheduled``, ``metrics.step_abandoned``), so tracing off changes no count.


def retry_scheduled(*, error_type: str, attempt: int, delay_s: float, **attrs: Any) -> None:
    """Note a scheduled retry on the current span."""
    event(
        "retry_scheduled",
        **{"podium.attempt": attempt, "podium.retry.delay_s": delay_s, "error.type": error_type},
        **attrs,
    )


def step_abandoned(*, error_type: str, attempts: int, **attrs: Any) -> None:
    """Note a step recovery gave up on (dead-lettered) on the current span."""
    event("step_abandoned", **{"podium.attempts": attempts, "error.type": error_type}, **attrs)
