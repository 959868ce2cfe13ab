"""The broker addresses the docs give host clients are ones compose really publishes.

docs/contracts.md once told producers to use localhost:9092, the in-network listener,
while compose publishes the host listener on localhost:29092: a producer following the
page could not connect."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_compose import (
    KAFKA,
    environment,
    listeners,
    load_compose,
    published_ports,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A line that hands a client its bootstrap address, in any of the documented clients.
KAFKA_LINE = re.compile(r"bootstrap|brokers", re.IGNORECASE)
LOOPBACK = re.compile(r"\b(?:localhost|127\.0\.0\.1):(\d+)\b")


def host_addresses(doc: dict[str, Any]) -> set[str]:
    """localhost:PORT for each advertised loopback listener whose port compose publishes."""
    kafka = doc["services"][KAFKA]
    published = {target: port for _, port, target in published_ports(kafka)}
    advertised = listeners(environment(kafka)["KAFKA_ADVERTISED_LISTENERS"])
    return {
        f"localhost:{port}"
        for host, port in advertised.values()
        if host in ("localhost", "127.0.0.1") and published.get(port) == port
    }


def address_problems(pages: dict[str, str], reachable: set[str]) -> list[str]:
    problems = []
    for name, text in pages.items():
        for number, line in enumerate(text.splitlines(), 1):
            if not KAFKA_LINE.search(line):
                continue
            for match in LOOPBACK.finditer(line):
                if f"localhost:{match.group(1)}" not in reachable:
                    problems.append(
                        f"{name}:{number}: {match.group(0)} is not a listener compose "
                        f"publishes to the host ({', '.join(sorted(reachable))})"
                    )
    return problems


def test_compose_publishes_one_host_listener() -> None:
    assert host_addresses(load_compose()) == {"localhost:29092"}


def test_every_documented_host_address_is_published() -> None:
    pages = {str(p.relative_to(REPO)): p.read_text() for p in PAGES}
    assert address_problems(pages, host_addresses(load_compose())) == []


def test_the_check_catches_the_in_network_port() -> None:
    page = 'producer = Producer({"bootstrap.servers": "localhost:9092"})\n'
    assert address_problems({"x.md": page}, {"localhost:29092"}) == [
        "x.md:1: localhost:9092 is not a listener compose publishes to the host (localhost:29092)"
    ]
