"""Every `podium submit … --wait` in the README and in docs/ runs, as written, against
the whole stack, and every shipped workflow has such an example.

The examples are read from the documents, so a new one is tested the day it is written.
Two things stand in for what a reader supplies: the OpenAI-compatible endpoint that
`ticket-triage` needs (tests/support/fake_openai.py), and the page the README tells them
to serve at http://127.0.0.1:8000/ (a local server on a free port, its address put in
the example's input in place of that one)."""

from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
import yaml

from podium.stack import Stack
from tests.conftest import REPO, stack_settings
from tests.e2e.test_cli import podium, stack_env
from tests.support.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# `podium submit` up to its `--wait`, inside a code span or on a line of a code block
SUBMIT = re.compile(r"podium submit ([^`|\n]*?--wait)")
README_PAGE = "http://127.0.0.1:8000/"


def documented_examples() -> list[tuple[str, list[str]]]:
    found: dict[str, tuple[str, list[str]]] = {}
    for doc in DOCUMENTS:
        for line_no, line in enumerate(doc.read_text().splitlines(), start=1):
            for match in SUBMIT.finditer(line):
                args = shlex.split(match.group(1))
                found.setdefault(" ".join(args), (f"{doc.name}:{line_no}", args))
    return list(found.values())


EXAMPLES = documented_examples()


def workflow_of(args: list[str]) -> str:
    return args[args.index("-w") + 1]


def test_every_shipped_workflow_has_a_documented_example() -> None:
    shipped = {yaml.safe_load(p.read_text())["name"] for p in (REPO / "workflows").glob("*.yaml")}
    documented = {workflow_of(args) for _, args in EXAMPLES}
    assert shipped <= documented, f"no `podium submit` example for {shipped - documented}"


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<h1>hello from the page the README serves</h1>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def page() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def docs_stack(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, page: str
) -> Iterator[Stack]:
    """The stack as a reader starts it for these examples: shipped workflows only, an
    LLM endpoint for ticket-triage, and the page allowed past the egress policy, as the
    README tells the reader to allow theirs."""
    home: Path = tmp_path_factory.mktemp("docs-home")
    with FakeOpenAI() as llm:
        env = {
            "PODIUM_EXECUTOR_EGRESS_ALLOW": urlsplit(page).netloc,
            "PODIUM_LLM_BASE_URL": llm.base_url,
            "PODIUM_LLM_MODEL": "gpt-4o-mini",
            "PODIUM_LLM_API_KEY": "sk-test",
        }
        settings = stack_settings(kafka_bootstrap, home).model_copy(
            update={"workflows": str(REPO / "workflows")}
        )
        with Stack(settings, env=env) as stack:
            yield stack


@pytest.mark.parametrize(
    ("where", "args"), EXAMPLES, ids=[f"{w} {' '.join(a)}" for w, a in EXAMPLES]
)
def test_a_documented_example_completes(
    where: str, args: list[str], docs_stack: Stack, page: str
) -> None:
    args = [a.replace(README_PAGE, page) for a in args]
    done = podium("submit", *args, "--json", "--timeout", "60", env=stack_env(docs_stack))
    assert done.returncode == 0, f"{where}: {done.stdout}{done.stderr}"
    outcome = orjson.loads(done.stdout)
    assert outcome["status"] == "completed", (where, outcome)
    expected = {
        "hello": {"text": "hi"},
        "fan-out": {"left": "left", "right": "right"},
        "chain3": {"from_two": {"from_one": {"n": 1}}},
        "fetch-and-summarise": {"summary": "primary answered 200, mirror 200", "same": True},
    }.get(workflow_of(args))
    if expected is not None:
        assert outcome["output"] == expected, (where, outcome)


def test_the_examples_were_found() -> None:
    # the regular expression must keep finding them as the documents change
    assert len(EXAMPLES) >= 6, EXAMPLES
