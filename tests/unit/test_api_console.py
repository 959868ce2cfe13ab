"""The web console's files, served by the api in-process: anonymous static files with
a strict Content-Security-Policy, ``/`` redirecting to them, the data still behind
the token; and the ES modules' imports all resolve (no build step checks them)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy.engine import Engine

from podium_api.app import create_app
from podium_api.console_static import CONSOLE_DIR
from podium_api.migrations import HISTORY
from podium_api.service import Commands
from podium_shared import Topics
from podium_shared.migrations import open_database

pytestmark = pytest.mark.unit

JS = CONSOLE_DIR / "js"


@pytest.fixture
def engine(tmp_path: object) -> Iterator[Engine]:
    e = open_database(f"sqlite:///{tmp_path}/api.db", HISTORY)
    yield e
    e.dispose()


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine, Commands(Topics("p")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as c:
        yield c


async def test_the_root_redirects_to_the_console(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 307
    assert r.headers["location"] == "/console/"
    # Without its slash the page's relative module paths would miss: redirected too.
    bare = await client.get("/console")
    assert bare.status_code in {307, 308}
    assert bare.headers["location"].endswith("/console/")


async def test_the_console_is_anonymous_html_with_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/console/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="js/main.js">' in r.text
    policy = r.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe" not in policy
    assert r.headers["x-content-type-options"] == "nosniff"
    module = await client.get("/console/js/main.js")
    assert module.status_code == 200
    # Browsers refuse an ES module served with another type.
    assert module.headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }


async def test_the_data_stays_behind_the_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/runs")).status_code == 401
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/console/../v1/runs")).status_code in {401, 404}


async def test_no_file_outside_the_console_is_served(client: httpx.AsyncClient) -> None:
    assert (await client.get("/console/%2e%2e/console_static.py")).status_code == 404
    assert (await client.get("/console/nothing.js")).status_code == 404


IMPORT = re.compile(r"""^\s*import\s+(?:[^'"]+\s+from\s+)?["']([^"']+)["'];""", re.MULTILINE)


def test_every_module_import_resolves_and_every_module_is_used() -> None:
    reached: set[str] = set()
    todo = ["main.js"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        source = (JS / name).read_text()
        for spec in IMPORT.findall(source):
            assert spec.startswith("./"), f"{name}: {spec} is not a relative module"
            target = spec.removeprefix("./")
            assert (JS / target).is_file(), f"{name} imports {spec}, which does not exist"
            todo.append(target)
    assert reached == {p.name for p in JS.glob("*.js")}


SINKS = re.compile(
    r"\.(?:innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML\(|document\.write"
    r"|\beval\(|new Function\("
)


def test_no_module_writes_markup_from_strings() -> None:
    # Text from runs (inputs, errors, headers) must never become markup next to the token.
    for path in JS.glob("*.js"):
        source = path.read_text()
        found = SINKS.search(source)
        assert found is None, f"{path.name} uses {found and found.group(0)}"
