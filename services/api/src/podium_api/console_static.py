"""The web console: static files (HTML, CSS, ES modules; no build step) served by
the api itself at ``/console/``, with ``/`` redirecting there.

The files are anonymous (they hold no data); every call they make to ``/v1/...``
carries the bearer token the operator pasted, as any other client's. The console's
responses carry a strict Content-Security-Policy (scripts, styles and connections
from this origin only, no inline script), so an injected string in a run's input
can never run as script beside the token in sessionStorage."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
PATH = "/console"

# 'self' only: the console builds its DOM with createElement (never innerHTML) and
# sets sizes through element.style, which CSP allows without 'unsafe-inline'.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def console_headers() -> dict[str, str]:
    """The headers every console file is served with."""
    return {
        "Content-Security-Policy": POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # The files change with the service's version; revalidate, never serve stale.
        "Cache-Control": "no-cache",
    }


class ConsoleFiles(StaticFiles):
    """Static files with the console's headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(console_headers())
        return response


def mount_console(app: FastAPI, directory: Path = CONSOLE_DIR) -> None:
    """Serve the console at ``/console/`` and redirect ``/`` to it (no OpenAPI entry)."""

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PATH}/", status_code=307)

    app.mount(PATH, ConsoleFiles(directory=directory, html=True), name="console")
