"""Which capabilities a pool has: the built-ins, then every entry point in the
``podium.capabilities`` group, then ``PODIUM_EXECUTOR_PLUGINS`` ("module:attr,...").
The drills (``flaky``, ``fail``, ``effect.record``) join the built-ins only when
``PODIUM_DRILLS`` is set: a production executor does not know them.

An entry point names either a ``Capability`` or a factory that takes
``Resources`` and returns one capability or several. Two capabilities with one
name are refused at start-up: nothing shadows silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from podium_executor.capabilities.base import Capability, Resources
from podium_executor.capabilities.basic import echo, sleep
from podium_executor.capabilities.drills import make_drills
from podium_executor.capabilities.http import make_http_request
from podium_executor.capabilities.llm import make_llm_chat
from podium_executor.capabilities.template import template

GROUP = "podium.capabilities"

# The built-ins that need no resources (settings, HTTP client).
BUILTINS: dict[str, Capability] = {c.name: c for c in (echo, sleep, template)}


class PluginError(Exception):
    """A capability plugin that cannot be loaded; the message names it."""


def builtin_capabilities(resources: Resources) -> list[Capability]:
    settings = resources.settings
    drills: list[Capability] = []
    if settings.drills:
        if settings.drills_root is None:  # bootstrap sets it to PODIUM_HOME
            raise PluginError(
                "PODIUM_DRILLS is set but the drills have no root: PODIUM_DRILLS_ROOT"
            )
        drills = make_drills(settings.drills_root)
    return [
        *BUILTINS.values(),
        make_http_request(resources),
        make_llm_chat(resources),
        *drills,
    ]


def _expand(obj: Any, origin: str, resources: Resources) -> list[Capability]:
    if isinstance(obj, Capability):
        return [obj]
    if callable(obj):
        made = obj(resources)
        items = [made] if isinstance(made, Capability) else list(made)
        if all(isinstance(c, Capability) for c in items):
            return items
    raise PluginError(f"{origin}: not a Capability nor a factory returning capabilities")


def _load_spec(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise PluginError(f"plugin {spec!r}: expected 'module:attribute'")
    try:
        obj: Any = import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"plugin {spec!r}: {exc}") from exc
    return obj


def discover(
    resources: Resources, plugins: Iterable[EntryPoint] | None = None
) -> dict[str, Capability]:
    """Every capability this pool offers, by name."""
    found: dict[str, tuple[Capability, str]] = {
        c.name: (c, "built-in") for c in builtin_capabilities(resources)
    }
    sources: list[tuple[str, Any]] = []
    for ep in entry_points(group=GROUP) if plugins is None else plugins:
        try:
            sources.append((f"entry point {ep.name} = {ep.value}", ep.load()))
        except Exception as exc:
            raise PluginError(f"entry point {ep.name} = {ep.value}: {exc}") from exc
    for spec in filter(None, (s.strip() for s in resources.settings.plugins.split(","))):
        sources.append((f"plugin {spec}", _load_spec(spec)))
    for origin, obj in sources:
        for cap in _expand(obj, origin, resources):
            if cap.name in found and found[cap.name][0] is not cap:
                raise PluginError(
                    f"{origin}: capability {cap.name!r} is already defined by {found[cap.name][1]}"
                )
            found[cap.name] = (cap, origin)
    return {name: cap for name, (cap, _) in sorted(found.items())}
