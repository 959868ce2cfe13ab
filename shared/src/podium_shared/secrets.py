"""Secrets stay secret: one redaction function for every edge where text leaves a
process (log lines, spans, StepFailed messages, history, DLQ headers, CLI output),
and private modes for what podium writes.

A provider that echoes a request back in its error ("401: invalid header
Authorization: Bearer sk-...") would otherwise carry the key into a StepFailed,
then into the task's history, the DLQ, the span and the log. ``redact`` masks:

- every value this process registered as secret (``register``,
  ``register_settings``: each ``SecretStr`` field, and the password of each URL
  field), wherever it appears;
- what is shaped like a credential even when this process does not know it (the
  router never holds the executor's LLM key): an ``Authorization`` header's value,
  a ``Bearer`` token, the password in ``scheme://user:password@host``.

Task data is not masked by shape beyond that: a task's own output is its business.

Files: services run with umask 077 (``private_umask``) and child processes are
started with it; the folders and files podium creates itself (PODIUM_HOME, logs,
spans, SQLite databases) are made 0700/0600 explicitly (``private_dir``,
``open_private``), so a process started with another umask still writes them
private. An existing folder keeps its mode: PODIUM_HOME may be a folder the user
made on purpose.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from pydantic import BaseModel, SecretStr

MASK = "***"
# Shorter values would mask ordinary words ("on", "dev") all over every line; a
# password that short is no secret anyway.
MIN_LENGTH = 6
UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600

_known: set[str] = set()
_ordered: tuple[str, ...] = ()

# "Authorization: Bearer x", "authorization=Basic x", "'Authorization': 'Bearer x'".
_AUTH_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)"
    r"(?:(bearer|basic|token|digest|negotiate)\s+)?[^\s'\",;}\]]+"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{6,}")
# scheme://user:password@host: the password, up to the last @ before the path.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@'\"]*):[^\s/'\"]*@")


def register(*values: str | SecretStr | None) -> None:
    """Mask these values from now on in everything this process redacts."""
    global _ordered
    for value in values:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text and len(text) >= MIN_LENGTH:
            _known.add(text)
    # Longest first: a secret that contains another is masked whole.
    _ordered = tuple(sorted(_known, key=len, reverse=True))


def forget() -> None:
    """Forget every registered value (tests)."""
    global _ordered
    _known.clear()
    _ordered = ()


def url_password(url: str) -> str | None:
    """The password in a URL (a database URL), or None."""
    from sqlalchemy.engine import make_url  # the CLI loads this module; keep it light

    try:
        password = make_url(url).password
    except Exception:
        match = re.search(r"://[^\s/:@]*:([^\s/@]*)@", url)
        return match.group(1) if match else None
    return None if password is None else str(password)


def secret_values(model: BaseModel) -> list[str]:
    """What in ``model`` is secret: each ``SecretStr`` field, and the password of
    each URL in a string or ``SecretStr`` field."""
    out: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
            out.append(text)
        elif isinstance(value, str):
            text = value
        else:
            continue
        if "://" in text and (password := url_password(text)):
            out.append(password)
    return out


# The OTLP exporter's headers often carry a vendor's API key ("x-honeycomb-team=...");
# the OpenTelemetry SDK reads them itself, so they are not in podium's settings.
OTLP_HEADER_VARIABLES = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")


def otlp_header_values(environ: Mapping[str, str]) -> list[str]:
    """The values of the OTLP exporter's headers (``k=v,k2=v2``), as secrets."""
    out = []
    for variable in OTLP_HEADER_VARIABLES:
        for pair in environ.get(variable, "").split(","):
            _name, sep, value = pair.partition("=")
            if sep and value.strip():
                out.append(value.strip())
    return out


def register_settings(*models: BaseModel) -> None:
    """Register every secret of these settings (at start-up, before anything logs)."""
    for model in models:
        register(*secret_values(model))


def sensitive(text: str) -> bool:
    """Whether ``redact`` could change ``text``: substring tests only (a regular
    expression alternation measured 10x slower), as nearly all text needs no mask."""
    if "://" in text and "@" in text:
        return True
    lowered = text.lower()
    if "authorization" in lowered or "bearer" in lowered:
        return True
    return any(value in text for value in _ordered)


def redact(text: str) -> str:
    """``text`` with every registered secret and every credential-shaped value masked."""
    if not sensitive(text):
        return text
    for value in _ordered:
        if value in text:
            text = text.replace(value, MASK)
    lowered = text.lower()
    if "authorization" in lowered:
        text = _AUTH_HEADER.sub(
            lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{MASK}", text
        )
    if "bearer" in lowered:
        text = _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    return text


def redact_value(value: Any) -> Any:
    """``value`` with ``redact`` applied to every string in it (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    # Exactly these: a named tuple (aiokafka's TopicPartition) is not built from an iterable.
    if type(value) is list:
        return [redact_value(v) for v in value]
    if type(value) is tuple:
        return tuple(redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def redact_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor (after ``format_exc_info``): mask secrets in every field."""
    for key, value in event_dict.items():
        try:
            event_dict[key] = redact_value(value)
        except Exception:  # logging must not break the caller: the field as masked text
            event_dict[key] = redact(repr(value))
    return event_dict


def redacted_excepthook(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """``sys.excepthook`` that prints the traceback redacted: an uncaught error's
    message (a database URL SQLAlchemy could not parse) ends up in the service's log."""
    sys.stderr.write(redact("".join(traceback.format_exception(kind, exc, tb))))


def read_secret_file(path: Path) -> SecretStr:
    """A secret kept in a file (``PODIUM_*_FILE``): its text without the final newline.
    A file that cannot be read is a bad setting (ValueError), named with its path."""
    try:
        return SecretStr(path.read_text().rstrip("\r\n"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc


def fill_from_files(model: BaseModel, pairs: Iterable[tuple[str, str, str]]) -> None:
    """Fill each secret field of ``model`` from its ``_FILE`` field: (field, file field,
    variable). Both set is refused; the file is read once, at start-up: a missing file
    is a configuration error now, not a failed connection later."""
    for field, file_field, variable in pairs:
        path = getattr(model, file_field)
        if path is None:
            continue
        if getattr(model, field) is not None:
            raise ValueError(f"set {variable} or {variable}_FILE, not both")
        setattr(model, field, read_secret_file(Path(path)))


def reveal(value: SecretStr | str | None) -> str | None:
    """The text of a secret setting (a ``SecretStr``, or a plain string a caller set)."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


# -- files -----------------------------------------------------------------------------------


def private_umask() -> int:
    """Make what this process creates from now on private (umask 077); the old umask."""
    return os.umask(UMASK)


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Within the block, what this process creates is private (umask 077): a command
    that writes PODIUM_HOME (``podium up``) without changing the umask of the rest."""
    old = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(old)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its missing parents) 0700; an existing folder is left as is."""
    missing = []
    here = path
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(folder, DIR_MODE)  # mkdir's mode passes through the umask; be exact
    return path


def open_private(path: Path, mode: str = "ab") -> IO[Any]:
    """Open ``path`` for writing, creating it 0600 (and its folder 0700) if new."""
    private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    return os.fdopen(fd, mode)


def touch_private(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists (a SQLite file before SQLite
    opens it: its journal and WAL files then take the same mode)."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)
