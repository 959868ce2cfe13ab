"""The web console in a real browser over the real stack: Debian's chromium, driven by
Playwright's Python API (Playwright's own browser downloads are never used).

A person's journey: sign in with a token, watch a task submitted meanwhile appear
and complete in the runs list without reloading, open its run page and see its steps
in the DAG; the same by keyboard alone; and a dead letter found, dry-run, replayed
with a confirmation and seen completing.

Screenshots are kept as test artefacts in ``$PODIUM_TEST_ARTEFACTS/console/`` (default:
``.artefacts/console/`` in the repository, ignored by git). Chromium comes from
``infra/chromium/ensure.sh`` (``make setup`` runs it): without one these tests skip,
and fail under CI=true."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from podium.stack import Stack
from podium_api import tokens
from podium_shared import Topics
from podium_shared.db import connect
from tests.conftest import stack_settings
from tests.support.browser import LAPTOP, TIMEOUT_MS, artefacts, browser, chromium

pytestmark = pytest.mark.integration

__all__ = ["browser", "chromium"]  # fixtures (tests/support/browser.py)


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, drills_root: Path
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("podium-console")
    # The replay drill fails on purpose: keep the executor's breaker out of the way.
    env = {"PODIUM_BREAKER_FAILURES": "1000"}
    with Stack(stack_settings(kafka_bootstrap, home), api=True, env=env) as s:
        yield s


def token(stack: Stack, role: tokens.Role, *tenants: str) -> str:
    engine = connect(stack.settings.database_url("api"))
    try:
        with engine.begin() as conn:
            _, secret = tokens.create(conn, role, list(tenants))
    finally:
        engine.dispose()
    return secret


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield pg
    finally:
        context.close()
    assert errors == [], f"the console raised: {errors}"


def submit(stack: Stack, secret: str, body: dict[str, Any]) -> None:
    r = httpx.post(
        f"{stack.api_url}/v1/tasks",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert r.status_code == 202, r.text


def sign_in(page: Page, stack: Stack, secret: str) -> None:
    page.goto(f"{stack.api_url}/")
    expect(page).to_have_url(re.compile(r"/console/"))
    page.get_by_label("API token").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    expect(page.locator("#live")).to_have_text(re.compile("live"))


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_sign_in_watch_a_run_complete_live_and_open_its_steps(stack: Stack, page: Page) -> None:
    secret = token(stack, "operator", "acme")
    page.goto(f"{stack.api_url}/console/")
    page.get_by_label("API token").fill("pdm_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown or revoked")

    sign_in(page, stack, secret)
    task_id = tid("console")
    # Submitted after the list loaded: it can only appear through the live stream.
    submit(stack, secret, {"task_id": task_id, "workflow": "hello", "input": {"text": "hi"}})
    row = page.locator(f'#runs tr[data-task-id="{task_id}"]')
    expect(row.locator(".status")).to_have_text("completed", timeout=TIMEOUT_MS)
    expect(row).to_contain_text("acme")
    page.screenshot(path=artefacts() / "runs.png")

    row.get_by_role("link", name=task_id).click()
    expect(page).to_have_url(re.compile(f"#/runs/{task_id}$"))
    expect(page.get_by_role("heading", name=f"Run {task_id}")).to_be_visible()
    node = page.locator('.dag g.node[data-step="echo"]')
    expect(node).to_have_class(re.compile("s-completed"))
    expect(page.locator("#steps tr#step-echo")).to_contain_text("completed")
    expect(page.get_by_label("Input", exact=True)).to_contain_text('"text": "hi"')
    expect(page.get_by_label("Output", exact=True)).to_contain_text('"text": "hi"')
    # History and trace: their data, or a clear "not available" where this server lacks them.
    for section in ("History", "Trace"):
        region = page.get_by_role("region", name=section)
        expect(region.locator("ol.timeline, .waterfall, .notice").first).to_be_visible()
        expect(region).not_to_contain_text("Could not load")
    page.screenshot(path=artefacts() / "run.png", full_page=True)

    # A reload keeps the session (the token is in sessionStorage), signing out drops it.
    page.reload()
    expect(page.get_by_role("heading", name=f"Run {task_id}")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API token")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('podium.token')") is None


def focused(page: Page) -> dict[str, Any]:
    return dict(
        page.evaluate(
            """() => {
              const el = document.activeElement;
              const style = getComputedStyle(el);
              // A DAG node shows its focus by a thicker border, not an outline.
              const rect = el instanceof SVGElement ? el.querySelector("rect") : null;
              const ring = rect
                ? getComputedStyle(rect).strokeWidth === "3px"
                : style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
              return {tag: el.tagName.toLowerCase(), text: (el.textContent || "").trim(),
                      id: el.id, cls: el.getAttribute("class") || "",
                      step: el.dataset ? el.dataset.step || "" : "", ring};
            }"""
        )
    )


def tab_to(page: Page, want: Any, limit: int = 60, *, back: bool = False) -> dict[str, Any]:
    """Press Tab (Shift+Tab with ``back``) until the focused element is the one ``want``
    accepts; each stop on the way must show a visible focus ring."""
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        f = focused(page)
        if f["tag"] != "body":
            assert f["ring"], f"no visible focus on {f}"
        if want(f):
            return f
    raise AssertionError(f"Tab never reached it; last focus: {focused(page)}")


def test_the_console_works_by_keyboard(stack: Stack, page: Page) -> None:
    secret = token(stack, "operator", "acme")
    task_id = tid("keys")
    submit(stack, secret, {"task_id": task_id, "workflow": "hello"})

    page.goto(f"{stack.api_url}/console/")
    # The token field has the focus; Enter signs in.
    page.keyboard.type(secret)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()

    # The skip link comes first and moves the focus to the content.
    page.reload()
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    first = tab_to(page, lambda f: True, limit=1)
    assert first["text"] == "Skip to content"
    page.keyboard.press("Enter")
    assert focused(page)["id"] == "main"

    # Filter by the task id from the keyboard, then open the run with Enter.
    tab_to(page, lambda f: f["id"] == "f-q")
    page.keyboard.type(task_id)
    page.keyboard.press("Enter")
    link = page.locator("#runs tbody a")
    expect(link).to_have_count(1)
    expect(link).to_have_text(task_id)
    expect(page.locator("#runs .status")).to_have_text("completed", timeout=TIMEOUT_MS)
    tab_to(page, lambda f: f["tag"] == "a" and f["text"] == task_id)
    page.keyboard.press("Enter")
    # The focus moves to the new page's heading, as a page load would.
    expect(page.get_by_role("heading", name=f"Run {task_id}")).to_be_focused()

    # A DAG node takes the focus; Space selects its step in the table.
    tab_to(page, lambda f: f["step"] == "echo" and "node" in f["cls"])
    page.keyboard.press(" ")
    expect(page.locator("#steps tr#step-echo")).to_have_attribute("aria-current", "true")
    expect(page.locator("#steps tr#step-echo")).to_be_focused()

    # Back to the sections' links, which follow the skip link.
    tab_to(page, lambda f: f["text"] == "Dead letters" and f["tag"] == "a", back=True)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Dead letters")).to_be_visible()
    expect(page.get_by_role("heading", name="Dead letters")).to_be_focused()


def test_a_dead_letter_found_dry_run_replayed_and_completed(
    stack: Stack, page: Page, drills_root: Path
) -> None:
    secret = token(stack, "operator", "*")
    topics = Topics(stack.settings.topic_prefix)
    dlq = topics.dlq(topics.steps("default"))

    task_id = tid("replay")
    fixed = drills_root / f"{task_id}.fixed"
    body = {"task_id": task_id, "workflow": "console-replay", "input": {"fixed": str(fixed)}}
    submit(stack, secret, body | {"tenant": "acme"})
    sign_in(page, stack, secret)
    row = page.locator(f'#runs tr[data-task-id="{task_id}"]')
    expect(row.locator(".status")).to_have_text("failed", timeout=TIMEOUT_MS)

    fixed.touch()  # the fault is fixed; now replay its dead letter from the console
    page.get_by_role("link", name="Dead letters").click()
    page.locator(f'#dlq-topics tr[data-topic="{dlq}"]').get_by_role("button").click()
    page.get_by_label("Task id").fill(task_id)
    page.get_by_label("Task id").press("Enter")
    record = page.locator("#dlq-records tr[data-id]")
    expect(record).to_have_count(1)
    record.get_by_role("button", name=re.compile("^Inspect")).click()
    expect(page.locator("#dlq-record")).to_contain_text(task_id)
    expect(page.locator("#dlq-record table.headers tbody tr")).not_to_have_count(0)
    record.get_by_role("checkbox").check()

    page.get_by_role("button", name="Dry run").click()
    expect(page.locator("#replay-report")).to_contain_text("Dry run: 1 of 1")
    page.screenshot(path=artefacts() / "dead-letters.png", full_page=True)

    page.get_by_role("button", name="Replay…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("1 record")
    dialog.get_by_role("button", name="Replay").click()
    expect(page.locator("#replay-report")).to_contain_text("Replayed 1 of 1")
    expect(page.locator("#audit")).to_contain_text("replay")

    page.get_by_role("link", name="Runs").click()
    expect(row.locator(".status")).to_have_text("completed", timeout=TIMEOUT_MS)
