"""Path segments that may hold any character, ``/`` and ``%`` included.

A task id is any string of 1 to 200 characters (``TaskSubmitted``), so
``/v1/runs/{task_id}`` must carry ids such as ``orders/2026/7``. Clients send them
percent-encoded (``orders%2F2026%2F7``: the CLI, the console and ``Location`` do),
but an ASGI server hands the application a *decoded* ``path`` (the ASGI spec says
so), where that id has become three segments and the route answers 404. The bytes
the client sent are still in ``raw_path``.

``KeepEncodedSeparators`` rebuilds ``path`` from ``raw_path`` one segment at a time:
each segment is decoded, then only ``%`` and ``/`` inside it are escaped again, so
routing splits where the client split and nowhere else. The ``segment`` convertor
(``{task_id:segment}``) takes those two escapes back out of the parameter. A path
with neither escape is unchanged, so every other route sees what it saw before.

Hand-written because neither Starlette nor FastAPI routes on the raw path (their
documented answer is ``{param:path}``, which cannot tell ``a/b/cancel``, a run's
cancel, from a run whose id is ``a/b/cancel``)."""

from __future__ import annotations

from urllib.parse import unquote

from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Receive, Scope, Send


def escape(segment: str) -> str:
    """A decoded segment as it travels in the rebuilt ``path``: ``%`` first, so the
    ``%2F`` standing for a slash is not escaped a second time."""
    return segment.replace("%", "%25").replace("/", "%2F")


def unescape(segment: str) -> str:
    """The inverse of ``escape``: the two escapes it makes, and nothing else."""
    return segment.replace("%2F", "/").replace("%25", "%")


def routed_path(raw_path: bytes) -> str:
    """The path to route on: ``raw_path`` decoded per segment (percent-escapes are
    UTF-8, as every client here encodes them; invalid bytes become U+FFFD, as in
    the server's own decoding)."""
    text = raw_path.decode("latin-1")
    return "/".join(escape(unquote(part, errors="replace")) for part in text.split("/"))


class KeepEncodedSeparators:
    """ASGI middleware: routes on the segments the client sent (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] in ("http", "websocket") else None
        if raw and b"%" in raw:
            scope = dict(scope)
            scope["path"] = routed_path(raw)
        await self.app(scope, receive, send)


class SegmentConvertor(Convertor[str]):
    """``{name:segment}``: one path segment whose value may hold ``/`` and ``%``."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return unescape(value)

    def to_string(self, value: str) -> str:
        return escape(value)


register_url_convertor("segment", SegmentConvertor())
