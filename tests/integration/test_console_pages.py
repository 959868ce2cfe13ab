"""The console's pages against the shapes the parts of issue 17 agreed on, in Debian's
chromium: a stub API (tests/support/console_stub.py) serves exactly those shapes
beside the real console files, so the pages of endpoints other parts are building
(history, trace, dead-letter records and replay, pools, workflows, audit) are
checked now; test_console.py runs the journey over the real stack. And the same
pages on a server without those endpoints: a clear "not available", nothing broken."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.browser import LAPTOP, TIMEOUT_MS, artefacts, browser, chromium
from tests.support.console_stub import TOKEN, StubApi

pytestmark = pytest.mark.integration

__all__ = ["browser", "chromium"]  # fixtures (tests/support/browser.py)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubApi]:
    with StubApi() as s:
        yield s


@pytest.fixture(scope="module")
def bare() -> Iterator[StubApi]:
    with StubApi(optional=False) as s:
        yield s


def open_page(browser: Browser, api: StubApi, route: str) -> Iterator[Page]:
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{api.url}/console/#{route}")
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_label("API token").press("Enter")
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"the console raised: {errors}"


@pytest.fixture
def page(browser: Browser, stub: StubApi) -> Iterator[Page]:
    yield from open_page(browser, stub, "/runs")


@pytest.fixture
def bare_page(browser: Browser, bare: StubApi) -> Iterator[Page]:
    yield from open_page(browser, bare, "/runs")


def test_the_run_page_draws_the_dag_history_and_waterfall(page: Page) -> None:
    page.get_by_role("link", name="r-1").click()
    dag = page.locator(".dag svg")
    expect(dag.locator("g.node")).to_have_count(6)  # five steps and one not reached
    expect(dag.locator('g.node[data-step="approve"]')).to_have_class(re.compile("s-pending"))
    expect(dag.locator("path.edge")).to_have_count(5)
    expect(dag.locator('path.edge[data-from="search"][data-to="summarise"]')).to_have_count(1)
    # Columns by depth: fetch and search first, publish last.
    x = {
        step: dag.locator(f'g.node[data-step="{step}"]').bounding_box()["x"]  # type: ignore[index]
        for step in ("fetch", "search", "summarise", "review", "publish")
    }
    assert x["fetch"] == x["search"] < x["summarise"] < x["review"] < x["publish"]
    expect(page.locator("#history li")).to_have_count(2)
    expect(page.locator("#history")).to_contain_text("request fetch, search")
    rows = page.locator(".waterfall [data-span]")
    expect(rows).to_have_count(4)
    # The waterfall is in tree order and to scale: search runs 1 s to 3 s of 4 s.
    expect(rows.nth(3)).to_contain_text("executor: step search")
    bar = rows.nth(3).locator(".bar")
    expect(bar).to_have_class(re.compile("error"))
    track = rows.nth(3).locator(".track").bounding_box()
    box = bar.bounding_box()
    assert track is not None and box is not None
    assert box["x"] - track["x"] == pytest.approx(track["width"] / 4, abs=2)
    assert box["width"] == pytest.approx(track["width"] / 2, abs=2)
    # Text from a run stays text.
    expect(page.get_by_label("Input", exact=True)).to_contain_text("<img src=x onerror=")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img").count() == 0
    page.screenshot(path=artefacts() / "stub-run.png", full_page=True)


def test_dead_letters_grouped_inspected_dry_run_and_replayed_after_confirming(
    page: Page, stub: StubApi
) -> None:
    page.get_by_role("link", name="Dead letters").click()
    page.get_by_role("button", name="Browse p.steps.default.dlq").click()
    groups = page.locator("fieldset.group")
    expect(groups).to_have_count(2)
    expect(groups.first).to_have_attribute("data-error-type", "Timeout")  # the biggest first
    page.get_by_role("button", name="Inspect ce-2").click()
    detail = page.locator("#dlq-record")
    expect(detail).to_contain_text("podium-dlq-reason")
    expect(detail).to_contain_text("Value (not JSON)")
    expect(detail.locator("h3")).to_be_focused()

    page.get_by_label("Timeout (2)").check()  # the whole group
    expect(page.get_by_text("2 selected")).to_be_visible()
    stub.replays.clear()
    page.get_by_role("button", name="Dry run").click()
    expect(page.locator("#replay-report")).to_contain_text("Dry run: 2 of 2")
    assert [(r["ids"], r["dry_run"]) for r in stub.replays] == [(["ce-0", "ce-1"], True)]

    # Replay asks first; cancelling sends nothing.
    page.get_by_role("button", name="Replay…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("2 records of p.steps.default.dlq")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert len(stub.replays) == 1
    page.get_by_role("button", name="Replay…").click()
    dialog.get_by_role("button", name="Replay").click()
    expect(page.locator("#replay-report")).to_contain_text("Replayed 2 of 2")
    assert [(r["ids"], r["dry_run"]) for r in stub.replays[1:]] == [(["ce-0", "ce-1"], False)]
    expect(page.locator("#audit")).to_contain_text("token 7")


def test_pools_workflows_and_live_runs(page: Page, stub: StubApi) -> None:
    expect(page.locator("#live")).to_have_text(re.compile("live"))
    new = {
        "task_id": "r-3",
        "tenant": "acme",
        "workflow": "research",
        "workflow_version": 2,
        "subject": None,
        "status": "accepted",
        "created_at": "2026-12-02T02:00:00Z",
        "accepted_at": None,
        "finished_at": None,
        "updated_at": "2026-12-02T02:00:00Z",
        "cancel_requested_at": None,
        "error": None,
        "usage": None,
        "dlq": None,
    }
    stub.push("run", json.dumps(new))
    expect(page.locator("#runs tbody tr").first).to_have_attribute("data-task-id", "r-3")
    stub.push("run", json.dumps(new | {"status": "completed"}))
    expect(page.locator('#runs tr[data-task-id="r-3"] .status')).to_have_text("completed")

    page.get_by_role("link", name="Pools").click()
    pool = page.locator('#pools tr[data-pool="default"]')
    expect(pool).to_contain_text("7 in 2 partitions")
    expect(pool).to_contain_text("open")
    page.get_by_role("link", name="Workflows").click()
    expect(page.locator('#workflows tr[data-workflow="research"]')).to_contain_text("v2")
    page.get_by_role("link", name="research").click()
    expect(page.get_by_label("Workflow")).to_have_value("research")


def test_endpoints_not_on_the_server_show_not_available(bare_page: Page) -> None:
    page = bare_page
    page.get_by_role("link", name="r-1").click()
    expect(page.get_by_role("region", name="History")).to_contain_text(
        "History is not available on this server."
    )
    expect(page.get_by_role("region", name="Trace")).to_contain_text("not available")
    expect(page.locator(".dag g.node")).to_have_count(6)  # the rest of the page works
    page.get_by_role("link", name="Dead letters").click()
    page.get_by_role("button", name="Browse p.steps.default.dlq").click()
    expect(page.locator("#dlq-records")).to_contain_text("not available on this server")
    expect(page.get_by_role("region", name="Recent replays and cancels")).to_contain_text(
        "not available"
    )
    for section in ("Pools", "Workflows"):
        page.get_by_role("link", name=section).click()
        expect(page.locator("main")).to_contain_text(f"{section} is not available on this server.")
