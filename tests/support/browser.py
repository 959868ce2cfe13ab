"""Browser tests' fixtures: Debian's chromium (from infra/chromium/ensure.sh) driven by
Playwright's Python API, never Playwright's own browser downloads; and where their
screenshots are kept. Import the fixtures into a test module to use them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ViewportSize, expect, sync_playwright

from tests.conftest import REPO

LAPTOP: ViewportSize = {"width": 1366, "height": 768}
TIMEOUT_MS = 60_000  # a run completing on a loaded 2-core machine
expect.set_options(timeout=TIMEOUT_MS)  # assertions wait as long as actions


def artefacts() -> Path:
    """Screenshots go to ``$PODIUM_TEST_ARTEFACTS/console/`` (default: ``.artefacts/console``
    in the repository, ignored by git), for CI to keep."""
    root = Path(os.environ.get("PODIUM_TEST_ARTEFACTS") or REPO / ".artefacts")
    path = root / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """The chromium executable; skip without one (fail under CI=true)."""
    found = subprocess.run(
        ["bash", str(REPO / "infra" / "chromium" / "ensure.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    path = found.stdout.strip()
    if not path:
        reason = f"no chromium for the browser tests: {found.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield b
        finally:
            b.close()
