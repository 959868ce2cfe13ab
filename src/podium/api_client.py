"""The operators' API as the CLI calls it: where it is, one method per endpoint, and
one clear line when it cannot be had.

Where: ``PODIUM_API_URL`` with the token in ``PODIUM_API_TOKEN``; with neither set, the
local stack's, from the files `podium up` writes under ``PODIUM_HOME`` (the URL in
``api.url``, an operator token in ``secrets/operator.token``). A token from those files
is only ever sent to the URL beside it, never to a ``PODIUM_API_URL`` of elsewhere.

Errors, one tree::

    ApiError            the message is the CLI's one line; ``code`` its exit code
    ├── Unreachable     no address, or nothing answers at it (exit 2)
    ├── Refused         401: no token or an unknown one; 403: a role too low (exit 2)
    └── NotFound        404: no such task (or topic) (exit 1)

This module imports only httpx and the standard library: `podium --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

EXIT_FAILED = 1  # cli_common.EXIT_TASK_FAILED
EXIT_USAGE = 2  # cli_common.EXIT_USAGE: nothing was done; fix a setting
PAGE = 200  # runs per request: the api's own page_max
HOW_TO_POINT = "set PODIUM_API_URL (and PODIUM_API_TOKEN), or start a local stack with `podium up`"


def api_url_file(home: Path) -> Path:
    """Where `podium up` writes the URL of its api, for the CLI."""
    return home / "api.url"


def operator_token_file(home: Path) -> Path:
    """Where `podium up` writes the operator token it made for the CLI (0600)."""
    return home / "secrets" / "operator.token"


class ApiError(Exception):
    """What the CLI says, in one line, and its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Unreachable(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class Refused(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class NotFound(ApiError):
    pass


@dataclass(frozen=True, slots=True)
class Target:
    """An api to call: its base URL, the token (None: send none) and where they came from."""

    url: str
    token: str | None
    source: str  # "PODIUM_API_URL", or the file the URL was read from

    def __repr__(self) -> str:  # the token never shows in a traceback or a log
        return f"Target(url={self.url!r}, source={self.source!r})"


def resolve_target(env: Mapping[str, str], home: Path) -> Target:
    """The api the CLI calls: ``PODIUM_API_URL``/``PODIUM_API_TOKEN`` when the URL is
    set, else the local stack's files under ``home``; Unreachable when neither is."""
    url = env.get("PODIUM_API_URL", "").strip()
    token = env.get("PODIUM_API_TOKEN", "").strip() or None
    if url:
        return Target(url.rstrip("/"), token, "PODIUM_API_URL")
    url_file = api_url_file(home)
    try:
        url = url_file.read_text().strip()
    except OSError:
        url = ""
    if not url:
        raise Unreachable(f"no podium api to call: {HOW_TO_POINT}")
    if token is None:
        try:
            token = operator_token_file(home).read_text().strip() or None
        except OSError:
            token = None
    return Target(url.rstrip("/"), token, str(url_file))


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    return str(detail if detail is not None else body)[:200]


def error_for(response: httpx.Response, target: Target, missing: str) -> ApiError:
    """The one line for a refused request; ``missing`` names what a 404 did not find."""
    code, detail = response.status_code, _detail(response)
    if code == 401:
        if target.token is None:
            return Refused(
                f"the podium api at {target.url} needs a token: set PODIUM_API_TOKEN "
                "(`podium up` prints an operator token; `python -m podium_api token create` "
                "makes one)"
            )
        return Refused(
            f"the podium api at {target.url} refused the token ({detail}): check PODIUM_API_TOKEN"
        )
    if code == 403:
        return Refused(f"the token lacks the role or tenant for this: {detail}")
    if code == 404:
        return NotFound(missing)
    if code >= 500:
        return ApiError(f"the podium api at {target.url} failed ({code}): {detail}")
    return ApiError(detail, EXIT_USAGE if code in (400, 422) else EXIT_FAILED)


class ApiClient:
    """The api's endpoints, as plain JSON (dicts and lists as the API answers them).

    ``transport``: an httpx transport, for tests (``httpx.MockTransport``)."""

    def __init__(
        self,
        target: Target,
        *,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.target = target
        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        # Long reads: the dead-letter summaries read every DLQ topic on each request;
        # a connection that cannot be made is told in seconds.
        self._http = httpx.Client(
            base_url=target.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        missing: str = "not found",
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=query, json=body)
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach the podium api at {self.target.url} "
                f"(from {self.target.source}): {type(exc).__name__}; is it running? "
                f"{HOW_TO_POINT}"
            ) from exc
        if response.status_code >= 400:
            raise error_for(response, self.target, missing)
        return response.json()

    # -- runs ------------------------------------------------------------------------------

    def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        tenant: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """``GET /v1/runs``: the newest ``limit`` runs that match, across pages."""
        params: dict[str, Any] = {"status": status, "workflow": workflow, "tenant": tenant}
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(out) < limit:
            paging = {"limit": min(PAGE, limit - len(out)), "cursor": cursor}
            page = self._call("GET", "/v1/runs", params=params | paging)
            out += page["items"]
            cursor = page.get("next_cursor")
            if not cursor or not page["items"]:
                break
        return out[:limit]

    def get_run(self, task_id: str) -> dict[str, Any]:
        """``GET /v1/runs/{task_id}``: one run with its steps."""
        run: dict[str, Any] = self._call(
            "GET", f"/v1/runs/{_seg(task_id)}", missing=f"no such task {task_id!r}"
        )
        return run

    def history(self, task_id: str) -> dict[str, Any]:
        """``GET /v1/runs/{task_id}/history``: the router's history entries."""
        found: dict[str, Any] = self._call(
            "GET", f"/v1/runs/{_seg(task_id)}/history", missing=f"no such task {task_id!r}"
        )
        return found

    def trace(self, task_id: str) -> dict[str, Any]:
        """``GET /v1/runs/{task_id}/trace``: the spans of the task across services."""
        found: dict[str, Any] = self._call(
            "GET", f"/v1/runs/{_seg(task_id)}/trace", missing=f"no such task {task_id!r}"
        )
        return found

    def cancel(self, task_id: str, reason: str = "") -> dict[str, Any]:
        """``POST /v1/runs/{task_id}/cancel`` (operator)."""
        accepted: dict[str, Any] = self._call(
            "POST",
            f"/v1/runs/{_seg(task_id)}/cancel",
            missing=f"no such task {task_id!r}",
            body={"reason": reason},
        )
        return accepted

    # -- dead letters ------------------------------------------------------------------------

    def dead_letters(self) -> list[dict[str, Any]]:
        """``GET /v1/dead-letters``: a summary per dead-letter topic."""
        topics: list[dict[str, Any]] = self._call("GET", "/v1/dead-letters")["topics"]
        return topics

    def dead_letter_records(
        self,
        topic: str,
        *,
        error_type: str | None = None,
        task_id: str | None = None,
        since: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """``GET /v1/dead-letters/{topic}/records``: records with their headers."""
        found: dict[str, Any] = self._call(
            "GET",
            f"/v1/dead-letters/{_seg(topic)}/records",
            missing=f"no topic {topic!r}",
            params={"error_type": error_type, "task_id": task_id, "since": since, "limit": limit},
        )
        return found

    def replay(
        self,
        topic: str,
        *,
        ids: list[str] | None = None,
        error_type: str | None = None,
        task_id: str | None = None,
        since: str | None = None,
        limit: int | None = None,
        dry_run: bool = False,
        to: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/dead-letters/{topic}/replay`` (operator): the replay report."""
        report: dict[str, Any] = self._call(
            "POST",
            f"/v1/dead-letters/{_seg(topic)}/replay",
            missing=f"no topic {topic!r}",
            body={
                "ids": ids or None,
                "error_type": error_type,
                "task_id": task_id,
                "since": since,
                "limit": limit,
                "dry_run": dry_run,
                "to": to,
            },
        )
        return report


def _seg(value: str) -> str:
    """``value`` as one path segment (a task id may hold '/' or '?')."""
    return quote(value, safe="")
