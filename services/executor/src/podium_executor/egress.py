"""Where a tool may connect: the egress policy of ``http.request`` (and of any
capability that uses ``Resources.http``).

    EgressPolicy.check(host, ip, port) -> None (allowed) | reason (refused)

      1. the podium cluster's own services (Kafka bootstrap, the databases): refused,
         whatever the allow-list says
      2. the pool's allow-list (``PODIUM_EXECUTOR_EGRESS_ALLOW``): allowed
      3. loopback, link-local (cloud metadata), private, CGNAT, unspecified,
         multicast, reserved addresses, and IPv6 forms of those (IPv4-mapped,
         NAT64, 6to4): refused
      4. anything else (a public address): allowed

The check runs on the address the client actually connects to: ``GuardedBackend``
resolves the name once, checks every address it got, then connects to a checked
IP (the request keeps its Host header and TLS server name). Checking a name and
then letting the socket resolve it again would let DNS rebinding swap the answer.
Each redirect hop opens its own connection, so each hop is checked the same way.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges ipaddress's is_private/is_global do not name plainly, or name differently
# across Python versions: keep them explicit.
_BLOCKED: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(n), why)
    for n, why in (
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("192.0.0.0/24", "reserved"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("fc00::/7", "private (unique local)"),
        ("ff00::/8", "multicast"),
        ("fec0::/10", "reserved (site-local)"),
        ("100::/64", "reserved (discard)"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOSTNAME = re.compile(r"(?i)[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?")


class EgressRefused(Exception):
    """The policy refused a connection; the message says to what and why."""


class BadAllowList(ValueError):
    """``PODIUM_EXECUTOR_EGRESS_ALLOW`` does not parse."""


def blocked_reason(ip: IP) -> str | None:
    """Why ``ip`` is refused by default, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None and ip.packed[:12] == bytes(12) and int(ip) > 1:
            embedded = ipaddress.IPv4Address(int(ip))  # IPv4-compatible ::a.b.c.d
        if embedded is not None:
            inner = blocked_reason(embedded)
            return f"{inner} (as {ip.compressed})" if inner else None
    for network, why in _BLOCKED:
        if ip.version == network.version and ip in network:
            return why
    if not ip.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True, slots=True)
class Rule:
    """One allow-list entry: a host name, an IP or CIDR, each with an optional port."""

    host: str | None = None
    network: Network | None = None
    port: int | None = None

    def matches(self, host: str, ip: IP, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip.version == self.network.version and ip in self.network
        return self.host == host.lower().rstrip(".")


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6] or [v6]:port
        end = entry.find("]")
        if end < 0:
            raise ValueError("unclosed '['")
        rest = entry[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("expected ':port' after ']'")
        return entry[1:end], _port(rest[1:]) if rest else None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, _port(port)
    return entry, None  # a name, an IPv4 address or CIDR, or a bare IPv6 address or CIDR


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port {text!r} is not 1-65535")
    return int(text)


def parse_rule(entry: str) -> Rule:
    """``host``, ``host:port``, ``10.1.2.3``, ``10.0.0.0/8``, ``10.0.0.0/8:443``,
    ``fd00::/8``, ``[::1]:8080``."""
    host, port = _split_port(entry.strip())
    if not host:
        raise ValueError("no host")
    try:
        return Rule(network=ipaddress.ip_network(host, strict=False), port=port)
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is neither a host name nor an IP address or network")
    return Rule(host=host.lower().rstrip("."), port=port)


def parse_allow(text: str) -> tuple[Rule, ...]:
    """The rules of a comma-separated allow-list; ``BadAllowList`` names the bad entry."""
    rules = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        try:
            rules.append(parse_rule(entry))
        except ValueError as exc:
            raise BadAllowList(
                f"PODIUM_EXECUTOR_EGRESS_ALLOW: {entry!r}: {exc} "
                "(expected comma-separated host, host:port, IP, CIDR or [IPv6]:port)"
            ) from None
    return tuple(rules)


def cluster_endpoints(
    kafka_bootstrap: str | None, database_urls: Iterable[str]
) -> tuple[Rule, ...]:
    """The podium cluster's own services, as rules: each Kafka bootstrap host:port and
    each database's host:port (SQLite has none)."""
    rules: list[Rule] = []
    for hostport in (kafka_bootstrap or "").split(","):
        hostport = hostport.strip().removeprefix("PLAINTEXT://").removeprefix("SASL_SSL://")
        if hostport:
            try:
                rules.append(parse_rule(hostport))
            except ValueError:
                continue
    for url in database_urls:
        parts = urlsplit(url)
        if parts.hostname:
            port = parts.port or (5432 if parts.scheme.startswith("postgres") else None)
            rules.append(_host_rule(parts.hostname, port))
    return tuple(rules)


def _host_rule(host: str, port: int | None) -> Rule:
    try:
        return Rule(network=ipaddress.ip_network(host), port=port)
    except ValueError:
        return Rule(host=host.lower().rstrip("."), port=port)


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    allow: tuple[Rule, ...] = ()
    cluster: tuple[Rule, ...] = ()
    # The cluster's names resolved to addresses (filled by GuardedBackend per connect).
    cluster_ips: frozenset[tuple[IP, int | None]] = field(default_factory=frozenset)

    def check(self, host: str, ip: IP, port: int) -> str | None:
        """None when ``host`` at ``ip``:``port`` may be reached, else why not."""
        for rule in self.cluster:
            if rule.matches(host, ip, port):
                return "it is one of the podium cluster's own services"
        if any(ip == cip and (cport is None or cport == port) for cip, cport in self.cluster_ips):
            return "it is one of the podium cluster's own services"
        if any(rule.matches(host, ip, port) for rule in self.allow):
            return None
        reason = blocked_reason(ip)
        if reason is None:
            return None
        return f"{reason} address, not in PODIUM_EXECUTOR_EGRESS_ALLOW"


Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, once."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _literal(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend whose ``connect_tcp`` resolves the name once,
    checks every address against the policy, then connects to a checked IP."""

    def __init__(
        self,
        policy: EgressPolicy,
        resolver: Resolver = resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def addresses(self, host: str, port: int) -> list[IP]:
        literal = _literal(host)
        if literal is not None:
            return [literal]
        try:
            return [ipaddress.ip_address(a.split("%")[0]) for a in await self.resolver(host, port)]
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc

    async def _cluster_ips(self, port: int) -> frozenset[tuple[IP, int | None]]:
        found: set[tuple[IP, int | None]] = set()
        for rule in self.policy.cluster:
            if rule.host is not None and rule.port in (None, port):
                try:
                    found.update((ip, rule.port) for ip in await self.addresses(rule.host, port))
                except httpcore.ConnectError:
                    continue  # a cluster name that does not resolve cannot be reached either
        return frozenset(found)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with anyio.fail_after(timeout):
            ips = await self.addresses(host, port)
            policy = self.policy
            if any(rule.host is not None for rule in policy.cluster):
                policy = EgressPolicy(policy.allow, policy.cluster, await self._cluster_ips(port))
        if not ips:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        for ip in ips:
            reason = policy.check(host, ip, port)
            if reason is not None:
                shown = host if _literal(host) else f"{host} ({ip})"
                raise EgressRefused(f"egress to {shown} port {port} refused: {reason}")
        error: Exception | None = None
        for ip in ips:
            try:
                return await self.inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused(f"egress to the unix socket {path} refused")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


MAX_REDIRECTS = 5


def guarded_client(policy: EgressPolicy, resolver: Resolver = resolve) -> httpx.AsyncClient:
    """An httpx client every connection of which goes through the policy: no proxy
    from the environment (a proxy would connect on our behalf, unchecked)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(  # httpx exposes no network_backend
        ssl_context=httpx.create_ssl_context(),
        # httpx's own defaults (httpx.Limits()), which a bare httpcore pool lacks.
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=GuardedBackend(policy, resolver),
    )
    return httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False, max_redirects=MAX_REDIRECTS
    )


__all__ = [
    "MAX_REDIRECTS",
    "BadAllowList",
    "EgressPolicy",
    "EgressRefused",
    "GuardedBackend",
    "Rule",
    "blocked_reason",
    "cluster_endpoints",
    "guarded_client",
    "parse_allow",
    "parse_rule",
]
