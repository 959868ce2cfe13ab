"""The egress policy of tools (docs/security.md, "Egress"): which addresses a pool may
reach, the allow-list's format, and http.request against a real HTTP server on
loopback: refused by default, reached when allow-listed, a redirect to a port that
is not allowed refused, a name that resolves to a private address refused."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from podium_contracts import StepCompleted, StepErrorType, StepFailed, StepRequested
from podium_executor.capabilities import Resources, builtin_capabilities
from podium_executor.egress import (
    BadAllowList,
    EgressPolicy,
    Rule,
    blocked_reason,
    cluster_endpoints,
    guarded_client,
    parse_allow,
)
from podium_executor.service import Executor
from podium_executor.settings import ExecutorSettings
from podium_shared import Topics
from podium_shared.startup import BadSetting, read_settings
from tests.support.http_server import serving

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("93.184.216.34", None),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("127.255.0.7", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private (unique local)"),
        ("fc00::1", "private (unique local)"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback (as ::ffff:7f00:1)"),
        ("::ffff:169.254.169.254", "link-local (cloud metadata) (as ::ffff:a9fe:a9fe)"),
        ("::ffff:10.0.0.1", "private (as ::ffff:a00:1)"),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata) (as 64:ff9b::a9fe:a9fe)"),
        ("2002:7f00:1::", "loopback (as 2002:7f00:1::)"),  # 6to4 of 127.0.0.1
        ("::127.0.0.1", "loopback (as ::7f00:1)"),  # IPv4-compatible
    ],
)
def test_default_policy(address: str, refused: str | None) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == refused


def _check(policy: EgressPolicy, host: str, address: str, port: int) -> str | None:
    return policy.check(host, ipaddress.ip_address(address), port)


@pytest.mark.parametrize(
    ("allow", "host", "address", "port", "allowed"),
    [
        ("", "example.com", "93.184.216.34", 443, True),
        ("", "localhost", "127.0.0.1", 80, False),
        ("127.0.0.1", "127.0.0.1", "127.0.0.1", 8080, True),
        ("127.0.0.1:8080", "127.0.0.1", "127.0.0.1", 8080, True),
        ("127.0.0.1:8080", "127.0.0.1", "127.0.0.1", 8081, False),
        ("10.0.0.0/8", "svc.internal", "10.9.8.7", 443, True),
        ("10.0.0.0/8:443", "svc.internal", "10.9.8.7", 80, False),
        ("svc.internal", "svc.internal", "10.9.8.7", 443, True),
        ("svc.internal", "SVC.internal.", "10.9.8.7", 443, True),
        ("svc.internal", "other.internal", "10.9.8.7", 443, False),
        ("svc.internal:443", "svc.internal", "10.9.8.7", 8443, False),
        ("fd00::/8", "v6.internal", "fd12::1", 80, True),
        ("[::1]:8080", "::1", "::1", 8080, True),
        ("[::1]:8080", "::1", "::1", 9090, False),
        # A v4 rule does not open the mapped v6 form of another address.
        ("10.0.0.0/8", "x", "::ffff:127.0.0.1", 80, False),
    ],
)
def test_allow_list(allow: str, host: str, address: str, port: int, allowed: bool) -> None:
    reason = _check(EgressPolicy(allow=parse_allow(allow)), host, address, port)
    assert (reason is None) is allowed, reason


def test_the_cluster_is_refused_even_when_allow_listed() -> None:
    cluster = cluster_endpoints(
        "127.0.0.1:9092,kafka:9093",
        ["postgresql+psycopg://podium@db.internal/podium", "sqlite:////tmp/x.db"],
    )
    assert cluster == (
        Rule(network=ipaddress.ip_network("127.0.0.1/32"), port=9092),
        Rule(host="kafka", port=9093),
        Rule(host="db.internal", port=5432),
    )
    policy = EgressPolicy(allow=parse_allow("127.0.0.1,10.0.0.0/8"), cluster=cluster)
    assert "podium cluster" in (_check(policy, "127.0.0.1", "127.0.0.1", 9092) or "")
    assert "podium cluster" in (_check(policy, "db.internal", "10.0.0.5", 5432) or "")
    assert _check(policy, "127.0.0.1", "127.0.0.1", 8080) is None
    # The cluster's names are refused by address too (GuardedBackend resolves them).
    by_ip = EgressPolicy(
        allow=policy.allow,
        cluster=cluster,
        cluster_ips=frozenset({(ipaddress.ip_address("10.0.0.9"), 9093)}),
    )
    assert "podium cluster" in (_check(by_ip, "alias", "10.0.0.9", 9093) or "")
    assert _check(by_ip, "alias", "10.0.0.9", 443) is None


@pytest.mark.parametrize(
    "bad", ["http://x", "10.0.0.0/33", "host:99999", "host:port", "[::1", "a b", ":80"]
)
def test_a_bad_allow_list_is_a_clear_error(bad: str) -> None:
    with pytest.raises(BadAllowList, match=r"^PODIUM_EXECUTOR_EGRESS_ALLOW: .*expected comma"):
        parse_allow(f"example.com,{bad}")


def test_a_bad_allow_list_stops_the_executor_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_EXECUTOR_EGRESS_ALLOW", "10.0.0.0/33")
    with pytest.raises(BadSetting, match="PODIUM_EXECUTOR_EGRESS_ALLOW"):
        read_settings(ExecutorSettings)


# -- http.request against a real server on loopback -----------------------------------


class Upstream:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.port = server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.hits: list[str] = []


@pytest.fixture
def target() -> Iterator[Upstream]:
    """The server a redirect points at."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"secret": true}')

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as server:
        upstream = Upstream(server)
        upstream.hits = hits
        yield upstream


@pytest.fixture
def upstream(target: Upstream) -> Iterator[Upstream]:
    """Answers /hello, and redirects /away to ``target``."""
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hosts.append(self.headers.get("host", ""))
            if self.path == "/away":
                self.send_response(302)
                self.send_header("location", f"{target.url}/metadata")
                self.send_header("content-length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"hello": "world"}')

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as server:
        upstream = Upstream(server)
        upstream.hits = hosts
        yield upstream


def step(input: dict[str, Any]) -> StepRequested:
    return StepRequested(
        task_id="t1",
        step_id="s",
        workflow="w",
        capability="http.request",
        pool="default",
        input=input,
        idempotency_key="t1/s",
        attempt=1,
    )


async def fetch(input: dict[str, Any], allow: str = "", resolver: Any = None) -> Any:
    policy = EgressPolicy(allow=parse_allow(allow))
    http = guarded_client(policy, resolver) if resolver else guarded_client(policy)
    async with http:
        caps = {c.name: c for c in builtin_capabilities(Resources(ExecutorSettings(), http))}
        return await Executor(caps, Topics("t")).run_step(step(input))


def assert_refused(out: Any, *words: str) -> None:
    assert isinstance(out, StepFailed), out
    assert out.error.type == StepErrorType.EGRESS_REFUSED, out.error
    assert out.error.error_class == "fatal"
    for word in words:
        assert word in out.error.message, out.error.message


async def test_loopback_is_refused_by_default(upstream: Upstream) -> None:
    out = await fetch({"url": f"{upstream.url}/hello"})
    assert_refused(out, "127.0.0.1", "loopback", "PODIUM_EXECUTOR_EGRESS_ALLOW")
    assert upstream.hits == []  # refused before connecting


async def test_loopback_is_reached_when_allow_listed(upstream: Upstream) -> None:
    out = await fetch({"url": f"{upstream.url}/hello"}, allow=f"127.0.0.1:{upstream.port}")
    assert isinstance(out, StepCompleted), out
    assert out.output["body"] == {"hello": "world"}
    assert upstream.hits == [f"127.0.0.1:{upstream.port}"]


async def test_a_redirect_to_an_address_not_allowed_is_refused(
    upstream: Upstream, target: Upstream
) -> None:
    out = await fetch(
        {"url": f"{upstream.url}/away", "follow_redirects": True},
        allow=f"127.0.0.1:{upstream.port}",
    )
    assert_refused(out, f"port {target.port}", "loopback")
    assert len(upstream.hits) == 1 and target.hits == []


async def test_a_redirect_is_returned_unless_asked_to_follow(upstream: Upstream) -> None:
    out = await fetch({"url": f"{upstream.url}/away"}, allow=f"127.0.0.1:{upstream.port}")
    assert isinstance(out, StepCompleted), out
    assert out.output["status"] == 302


async def test_an_allowed_redirect_is_followed(upstream: Upstream, target: Upstream) -> None:
    out = await fetch(
        {"url": f"{upstream.url}/away", "follow_redirects": True},
        allow=f"127.0.0.1:{upstream.port},127.0.0.1:{target.port}",
    )
    assert isinstance(out, StepCompleted), out
    assert out.output["body"] == {"secret": True} and target.hits == ["/metadata"]


async def test_localhost_is_refused(upstream: Upstream) -> None:
    out = await fetch({"url": f"http://localhost:{upstream.port}/hello"})
    assert_refused(out, "localhost (", "loopback")
    assert upstream.hits == []


async def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    async def resolver(host: str, port: int) -> Sequence[str]:
        return {"public.example": ["93.184.216.34", "10.0.0.7"], "meta.example": ["fe80::1"]}[host]

    # One private answer among public ones is enough: the socket could get either.
    assert_refused(await fetch({"url": "http://public.example/"}, resolver=resolver), "10.0.0.7")
    assert_refused(await fetch({"url": "http://meta.example/"}, resolver=resolver), "link-local")


async def test_the_connection_goes_to_the_checked_address(upstream: Upstream) -> None:
    """The socket connects to the address the policy checked, not to a second lookup
    of the name (DNS rebinding): the resolver is asked once per connection."""
    calls: list[str] = []

    async def resolver(host: str, port: int) -> Sequence[str]:
        calls.append(host)
        return ["127.0.0.1"]

    out = await fetch(
        {"url": f"http://rebind.example:{upstream.port}/hello"},
        allow=f"127.0.0.1:{upstream.port}",
        resolver=resolver,
    )
    assert isinstance(out, StepCompleted), out
    assert calls == ["rebind.example"]
    # The request keeps its original Host header.
    assert upstream.hits == [f"rebind.example:{upstream.port}"]
