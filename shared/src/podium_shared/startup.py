"""How every service refuses to start: a bad setting or a bad definition is one
line on stderr that names what to fix, then exit code 2.

2 is a usage error: restarting the process will not help, so a supervisor
(``podium up``, compose) should not loop on it, and no traceback hides the line.
``read_settings`` turns a settings class's ``ValidationError`` into ``BadSetting``
naming the environment variable; ``refusing`` prints it (or a definition error
the service names, such as the router's workflow errors) and exits.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings

from podium_shared.secrets import redact

EXIT_BAD_CONFIG = 2

S = TypeVar("S", bound=BaseSettings)


class BadSetting(ValueError):
    """A setting that failed validation; the message names its variable."""


def variable_names(cls: type[BaseSettings], key: str) -> list[str]:
    """The environment variables that set ``key`` (a field name or alias), newest first."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            choices = [c.upper() for c in alias.choices if isinstance(c, str)]
        elif isinstance(alias, str):
            choices = [alias.upper()]
        else:
            choices = []
        if key == name or key.upper() in choices:
            return choices or [f"{prefix}{name}".upper()]
    return [f"{prefix}{key}".upper()]


def describe(cls: type[BaseSettings], exc: ValidationError) -> str:
    """``VARIABLE: what is wrong`` for the first error (a model check names its own)."""
    first = exc.errors()[0]
    if not first["loc"]:
        return str(first["msg"])
    names = variable_names(cls, str(first["loc"][0]))
    return f"{' or '.join(names)}: {first['msg']}"


def read_settings(cls: type[S], **overrides: Any) -> S:
    """``cls(**overrides)`` from the environment, or ``BadSetting`` naming the variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise BadSetting(describe(cls, exc)) from exc


def refuse(service: str, line: str) -> NoReturn:
    """Print ``<service>: <line>`` on stderr and exit 2."""
    print(f"{service}: {redact(line)}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_CONFIG)


@contextmanager
def refusing(
    service: str, definitions: Mapping[type[Exception], str] | None = None
) -> Iterator[None]:
    """Around a service's start-up: a bad setting, or an error of one of
    ``definitions`` (exception type -> what it is, e.g. ``"bad workflow definition"``),
    becomes one line on stderr and exit 2."""
    try:
        yield
    except BadSetting as exc:
        refuse(service, f"bad setting {exc}")
    except ValidationError as exc:  # a settings class read without read_settings
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        refuse(service, f"bad setting {exc.title}{'.' + where if where else ''}: {first['msg']}")
    except Exception as exc:
        for kind, what in (definitions or {}).items():
            if isinstance(exc, kind):
                refuse(service, f"{what}: {exc}")
        raise
