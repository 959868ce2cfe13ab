"""Starts and stops a whole podium stack: the broker (embedded unless
``PODIUM_KAFKA_BOOTSTRAP`` names a cluster) and each service as a child process.
Used by `podium up`, the demo, the benchmarks and the integration tests."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pydantic import SecretStr

from podium.api_client import api_url_file as api_url_file
from podium.api_client import operator_token_file as operator_token_file
from podium_shared import EmbeddedBroker, Settings, Topics, acls
from podium_shared.acls import principal, tenant_principal
from podium_shared.aio import run_sync
from podium_shared.embedded import die_with_parent
from podium_shared.kafka import ensure_topics, resolve_idempotence
from podium_shared.kafka_broker import SCRAM_MECHANISM, Auth, BrokerSecurity, KafkaBroker
from podium_shared.secrets import UMASK, open_private, private_dir, private_files
from podium_shared.tls import LocalCA, write_secret

SERVICES = ("router", "executor", "memory", "recovery")
DEFAULT_API_PORT = 8780  # the api's own default (podium_api.settings.ApiSettings.port)
UP_TOKEN_NAME = "podium up"  # the operator token a local stack makes for its CLI


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_local_broker(
    settings: Settings, security: BrokerSecurity | None = None
) -> EmbeddedBroker | KafkaBroker:
    """The broker `podium up` runs when no cluster is named: Tansu (memory only) or
    Apache Kafka with its data under PODIUM_HOME/kafka (kept across restarts)."""
    if settings.broker == "kafka":
        return KafkaBroker(
            settings.home / "kafka", log_dir=settings.home / "logs", security=security
        ).start()
    if security is not None:
        raise RuntimeError("--secure needs the Apache Kafka broker (--broker kafka)")
    return EmbeddedBroker(log_path=settings.home / "logs" / "broker.log").start()


def secure_local(
    home: Path, pools: tuple[str, ...], tenants: tuple[str, ...] = (), auth: Auth = "scram"
) -> BrokerSecurity:
    """A throwaway CA and broker certificate under ``home/tls``, and a principal per
    role (and per tenant bound to its own topics): with ``scram`` a SCRAM user whose
    password is in ``home/secrets/<user>.password`` (0600; made once and kept, as the
    broker's metadata holds them across restarts); with ``mtls`` a client certificate
    whose CN is the principal, ``home/tls/<user>.pem`` and its key ``<user>.key``
    (0600), issued again at each start as the broker's is."""
    ca = LocalCA.ensure(home / "tls")
    server = ca.issue("broker", server=True)
    # "api": the operators' API service (issue 17); its ACLs are in podium_shared.acls.
    names = ["operator", "router", "memory", "recovery", "api"]
    names += [principal("executor", p) for p in pools]
    names += [tenant_principal(t) for t in tenants]
    if auth == "mtls":
        clients = {name: ca.issue(name, server=False) for name in names}
        return BrokerSecurity(server=server, cafile=ca.cert, auth="mtls", clients=clients)
    users = {}
    for name in ["broker", *names]:
        path = password_file(home, name)
        if not path.exists():
            write_secret(path, secrets.token_urlsafe(24).encode())
        users[name] = path.read_text().strip()
    return BrokerSecurity(server=server, cafile=ca.cert, users=users)


def password_file(home: Path, user: str) -> Path:
    return home / "secrets" / f"{user}.password"


def api_port(configured: str | None) -> int:
    """The api's port for `podium up`: ``PODIUM_API_PORT`` when set (0: a free one),
    else the default, or a free one when something else listens there."""
    if configured is not None and configured.strip():
        port = int(configured)
        if not 0 <= port <= 65_535:
            raise ValueError(f"PODIUM_API_PORT must be 0-65535, not {port}")
        return port or free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", DEFAULT_API_PORT))
        except OSError:
            return free_port()
    return DEFAULT_API_PORT


class StackInterrupted(BaseException):
    """A signal arrived while the stack was starting (a BaseException, so that no
    ``except Exception`` on the way swallows it, and ``start()`` stops what it began)."""


def log_line(message: str) -> None:
    print(f"podium: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Restart:
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


@dataclass(frozen=True)
class RestartPolicy:
    """When a dead service is started again: exponential backoff from ``first_delay_s``
    up to ``max_delay_s``; more than ``max_crashes`` within ``window_s`` means it
    keeps crashing, and the stack stops with the reason instead."""

    first_delay_s: float = 0.5
    max_delay_s: float = 10.0
    max_crashes: int = 5
    window_s: float = 120.0

    def decide(self, crash_times: list[float], now: float) -> Restart | GiveUp:
        recent = [t for t in crash_times if now - t <= self.window_s]
        if len(recent) > self.max_crashes:
            return GiveUp(f"crashed {len(recent)} times in {self.window_s:.0f}s")
        return Restart(min(self.max_delay_s, self.first_delay_s * 2 ** (len(recent) - 1)))


@dataclass
class ServiceProcess:
    name: str
    instance: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int | None = None  # its /metrics endpoint on 127.0.0.1
    pool: str | None = None  # an executor's pool
    home: Path | None = None  # its own PODIUM_HOME; None: the stack's

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None


@dataclass
class Stack:
    settings: Settings
    executors: int = 1
    pools: tuple[str, ...] = ("default",)
    env: dict[str, str] = field(default_factory=dict)
    broker: EmbeddedBroker | KafkaBroker | None = None
    processes: list[ServiceProcess] = field(default_factory=list)
    metrics: bool = True  # a /metrics port per process, from the free ports
    routers: int = 1
    # Each process its own PODIUM_HOME (home/replicas/<instance>), as each container or
    # pod has its own volume: the processes then share only the broker and whatever
    # the PODIUM_*_DATABASE_URL settings name.
    separate_homes: bool = False
    # A local Apache Kafka with TLS and SCRAM (or mTLS), each process its own principal.
    secure: bool = False
    auth: Auth = "scram"
    security: BrokerSecurity | None = None
    # The api service (projection + HTTP API) too; opt-in while most tests do not need it.
    api: bool = False
    api_port: int | None = None  # its HTTP port on 127.0.0.1; None: a free one

    @property
    def api_url(self) -> str:
        if self.api_port is None:
            raise RuntimeError("this stack runs no api service")
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def bootstrap(self) -> str:
        return self.settings.require_bootstrap()

    @property
    def log_dir(self) -> Path:
        return self.settings.home / "logs"

    def start(self, timeout_s: float = 60.0) -> Stack:
        private_dir(self.settings.home)
        with private_files():  # the broker's data, certificates, logs
            return self._start(timeout_s)

    def _start(self, timeout_s: float) -> Stack:
        try:
            if not self.settings.kafka_bootstrap:
                if self.secure:
                    self.security = secure_local(
                        self.settings.home, self.pools, self.settings.tenant_names, self.auth
                    )
                self.broker = start_local_broker(self.settings, self.security)
                self.settings = self.settings.model_copy(
                    update={"kafka_bootstrap": self.broker.bootstrap, **self._operator()}
                )
            elif self.secure:
                raise RuntimeError(
                    "--secure starts a local Kafka; for a cluster of your own set "
                    "PODIUM_SECURITY_PROTOCOL and the PODIUM_SASL_*/PODIUM_SSL_* settings"
                )
            if self.security is not None:
                # As the brokers' own principal, the one allowed to alter ACLs.
                entries = acls.acls(
                    self.settings.topic_prefix, self.pools, self.settings.tenant_names
                )
                admin = self.security.client_options()
                admin["bootstrap_servers"] = self.bootstrap
                run_sync(acls.apply(admin, entries))
            topics = Topics(self.settings.topic_prefix)
            declared = topics.declarations(
                ("default", "memory", *self.pools),
                tenants=self.settings.tenant_names,
                dlq_retention_ms=self.settings.dlq_retention_ms,
                replication_factor=self.settings.replication_factor,
            )
            run_sync(ensure_topics(self.settings, declared))
            # Asked once here rather than by every child: the answer is the cluster's.
            self.settings = run_sync(resolve_idempotence(self.settings))
            for name in ("router",) * self.routers + ("memory", "recovery"):
                self.spawn(name)
            for pool in self.pools:
                for _ in range(self.executors):
                    self.spawn("executor", pool=pool)
            if self.api:
                if self.api_port is None:
                    self.api_port = free_port()
                self.spawn("api")
            self.wait_ready(timeout_s)
            if self.api:
                self.wait_api(max(5.0, timeout_s))
                # Where the CLI finds it when PODIUM_API_URL is unset (removed by stop()).
                api_url_file(self.settings.home).write_text(self.api_url + "\n")
        except BaseException:
            self.stop()
            raise
        return self

    def _operator(self) -> dict[str, object]:
        """The stack's own client settings on a secure local broker: the operator's."""
        if self.security is None:
            return {}
        if self.security.auth == "mtls":
            issued = self.security.clients["operator"]
            return {
                "security_protocol": "SSL",
                "ssl_cafile": self.security.cafile,
                "ssl_certfile": issued.cert,
                "ssl_keyfile": issued.key,
            }
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_username": "operator",
            "sasl_password": SecretStr(self.security.users["operator"]),
            "sasl_password_file": password_file(self.settings.home, "operator"),
            "ssl_cafile": self.security.cafile,
        }

    def principal_env(self, user: str) -> dict[str, str]:
        """The client settings of ``user`` on the secure local broker: its certificate
        and key (mTLS), or its name and password file (SCRAM; the password itself never
        goes into an environment)."""
        assert self.security is not None
        env = {"PODIUM_SECURITY_PROTOCOL": self.security.listener}
        env["PODIUM_SSL_CAFILE"] = str(self.security.cafile)
        if self.security.auth == "mtls":
            issued = self.security.clients[user]
            env["PODIUM_SSL_CERTFILE"] = str(issued.cert)
            env["PODIUM_SSL_KEYFILE"] = str(issued.key)
        else:
            env["PODIUM_SASL_MECHANISM"] = SCRAM_MECHANISM
            env["PODIUM_SASL_USERNAME"] = user
            env["PODIUM_SASL_PASSWORD_FILE"] = str(password_file(self.settings.home, user))
        return env

    def child_env(
        self, pool: str | None = None, home: Path | None = None, service: str | None = None
    ) -> dict[str, str]:
        env = {**os.environ, **self.env}
        if self.security is not None:
            # Each process its own principal, and nothing of another kind of login the
            # user's environment may hold beside it.
            for key in [k for k in env if k.startswith(("PODIUM_SASL_", "PODIUM_SSL_"))]:
                del env[key]
            env.update(self.principal_env(principal(service, pool)))
        env["PODIUM_KAFKA_BOOTSTRAP"] = self.bootstrap
        env["PODIUM_HOME"] = str(home or self.settings.home)
        env["PODIUM_TOPIC_PREFIX"] = self.settings.topic_prefix
        env["PODIUM_FETCH_MAX_WAIT_MS"] = str(self.settings.fetch_max_wait_ms)
        env["PODIUM_BROKER"] = str(self.settings.broker)
        env["PODIUM_PRODUCER_IDEMPOTENCE"] = self.settings.producer_idempotence
        env["PODIUM_WORKFLOWS"] = self.settings.workflows
        env["PODIUM_TENANTS"] = self.settings.tenants
        for role in (*SERVICES, "api"):
            # Passed on as it was given: a URL kept in a file stays in its file.
            variable = f"PODIUM_{role.upper()}_DATABASE_URL"
            url_file = getattr(self.settings, f"{role}_database_url_file")
            url = self.settings.configured_database_url(role)
            if url_file is not None:
                env[f"{variable}_FILE"] = str(url_file)
                env.pop(variable, None)
            elif url:
                env[variable] = url
                env.pop(f"{variable}_FILE", None)
        if service == "api" and self.api_port is not None:
            env["PODIUM_API_PORT"] = str(self.api_port)
            env["PODIUM_API_HOST"] = "127.0.0.1"
        if pool:
            # The executor's own name for it; the deprecated PODIUM_POOL, if the user's
            # environment has it, must not leave a second, older answer beside it.
            env["PODIUM_EXECUTOR_POOL"] = pool
            env.pop("PODIUM_POOL", None)
        return env

    def spawn(self, name: str, pool: str | None = None, home: Path | None = None) -> ServiceProcess:
        """Start one service process; its log goes under the stack's PODIUM_HOME/logs.
        ``home`` is its own PODIUM_HOME (default: the stack's, or its own directory
        under it with ``separate_homes``)."""
        private_dir(self.log_dir)
        index = sum(1 for p in self.processes if p.name == name)
        instance = f"{name}-{pool}-{index}" if pool else (f"{name}-{index}" if index else name)
        if home is None and self.separate_homes:
            home = self.settings.home / "replicas" / instance
        log_path = self.log_dir / f"{instance}.log"
        out = open_private(log_path, "ab")
        env = self.child_env(pool, home, name)
        metrics_port = free_port() if self.metrics else None
        if metrics_port:
            env["PODIUM_METRICS_PORT"] = str(metrics_port)
            env["PODIUM_METRICS_HOST"] = "127.0.0.1"
        proc = subprocess.Popen(
            [sys.executable, "-m", f"podium_{name}"],
            env=env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            umask=UMASK,  # a service's databases, spans and blobs: private
            start_new_session=True,  # Ctrl-C reaches `podium up`, which stops children in order
            preexec_fn=die_with_parent,  # and a killed `podium up` takes them with it
        )
        out.close()
        sp = ServiceProcess(name, instance, proc, log_path, metrics_port, pool, home)
        self.processes.append(sp)
        return sp

    def respawn(self, dead: ServiceProcess) -> ServiceProcess:
        """Start a dead service process again in its place (same name, pool and log)."""
        out = open_private(dead.log_path, "ab")
        env = self.child_env(dead.pool, dead.home, dead.name)
        if dead.metrics_port:
            env["PODIUM_METRICS_PORT"] = str(dead.metrics_port)
            env["PODIUM_METRICS_HOST"] = "127.0.0.1"
        dead.proc = subprocess.Popen(
            [sys.executable, "-m", f"podium_{dead.name}"],
            env=env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            umask=UMASK,  # a service's databases, spans and blobs: private
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        out.close()
        return dead

    def supervise(self, policy: RestartPolicy, should_stop: Callable[[], bool]) -> str:
        """Keep every service running until ``should_stop()``: a process that exits is
        started again after the policy's backoff, as compose's restart policy or a
        Kubernetes Deployment would; one that keeps crashing stops the stack. Returns
        why supervision ended."""
        crashes: dict[str, list[float]] = {}
        due: dict[str, float] = {}  # instance -> when to start it again
        while not should_stop():
            now = time.monotonic()
            for p in self.processes:
                if p.instance in due:
                    if now >= due[p.instance]:
                        del due[p.instance]
                        self.respawn(p)
                        log_line(f"{p.instance} restarted (pid {p.proc.pid})")
                    continue
                code = p.proc.poll()
                if code is None:
                    continue
                history = crashes.setdefault(p.instance, [])
                history.append(now)
                decision = policy.decide(history, now)
                if isinstance(decision, GiveUp):
                    return f"{p.instance} exited with {code}: {decision.reason}; see {p.log_path}"
                due[p.instance] = now + decision.delay_s
                log_line(
                    f"{p.instance} exited with {code}; restarting in {decision.delay_s:.1f}s "
                    f"(crash {len(history)}); see {p.log_path}"
                )
            time.sleep(0.2)
        return "stopped"

    def ready_files(self) -> list[Path]:
        out = []
        for p in self.processes:
            run = (p.home or self.settings.home) / "run"
            instance = (
                f"executor-{self.pool_of(p)}-{p.proc.pid}"
                if p.name == "executor"
                else f"{p.name}-{p.proc.pid}"
            )
            out.append(run / f"{instance}.ready")
        return out

    def pool_of(self, p: ServiceProcess) -> str:
        return p.instance.split("-")[1]

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every process has joined its consumer group."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for p in self.processes:
                if p.proc.poll() is not None:
                    tail = p.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{p.instance} exited with {p.proc.returncode}:\n{tail}")
            if all(f.exists() for f in self.ready_files()):
                return
            time.sleep(0.05)
        waiting = [
            p.instance
            for p, f in zip(self.processes, self.ready_files(), strict=True)
            if not f.exists()
        ]
        raise TimeoutError(f"not ready after {timeout_s}s: {', '.join(waiting)}")

    def wait_api(self, timeout_s: float) -> None:
        """Wait until the api answers ``/healthz`` (its HTTP server starts beside the
        consumer, so joining the group does not mean it is listening yet)."""
        deadline = time.monotonic() + timeout_s
        api = next(p for p in self.processes if p.name == "api")
        while time.monotonic() < deadline:
            if api.proc.poll() is not None:
                tail = api.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"api exited with {api.proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"the api did not answer {self.api_url}/healthz in {timeout_s}s")

    def operator_token(self) -> tuple[str, Path]:
        """An operator token for every tenant in the api's database, for the local
        CLI: the one in ``PODIUM_HOME/secrets/operator.token`` (0600) while it is
        still valid there, else a new one written to that file. Returns (the token,
        its file)."""
        from podium_api import tokens
        from podium_api.bootstrap import open_api_database

        path = operator_token_file(self.settings.home)
        engine = open_api_database(self.settings)
        try:
            with engine.begin() as conn:
                if path.exists():
                    kept = path.read_text().strip()
                    who = tokens.authenticate(conn, kept) if kept else None
                    if who is not None and who.role == "operator" and who.every_tenant:
                        return kept, path
                _, token = tokens.create(conn, "operator", [tokens.ALL_TENANTS], UP_TOKEN_NAME)
            write_secret(path, token.encode() + b"\n")
        finally:
            engine.dispose()
        return token, path

    def kill(self, p: ServiceProcess, sig: int = signal.SIGKILL) -> None:
        if p.proc.poll() is None:
            p.proc.send_signal(sig)
            p.proc.wait(30)

    def stop(self) -> None:
        if self.api:  # the CLI must not call a stopped stack's api
            api_url_file(self.settings.home).unlink(missing_ok=True)
        for p in self.processes:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.proc.wait(20)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
        self.processes.clear()
        if self.broker:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
