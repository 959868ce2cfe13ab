"""docker-compose.yml, the files it mounts (infra/prometheus, infra/grafana, the
PostgreSQL init script) and services/Dockerfile, checked without a Docker engine.

What the layout must guarantee: everything that holds state on a named volume or in
PostgreSQL, one database per role and per executor pool shared by its replicas and made
by the init script, every replica of every podium service scraped by Prometheus, and
Grafana provisioned with that Prometheus and the dashboard.

The checks are functions that return the problems they find, so the tests below
can also show that each check fails on a broken copy of the file."""

from __future__ import annotations

import copy
import fnmatch
import importlib
import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from podium_shared import Settings
from podium_shared.kafka_broker import KAFKA_VERSION
from podium_shared.telemetry import TelemetrySettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
# One Dockerfile for the five services, told which by the build argument SERVICE.
DOCKERFILE = "services/Dockerfile"
SERVICES = ("router", "executor", "memory", "recovery", "api")
# The one service whose port is published: the operators' HTTP API.
API = "api"
KAFKA = "kafka"

# The Compose Specification's keys for what this file uses (compose-spec.json);
# a misspelt key is otherwise ignored by nothing but the engine.
TOP_LEVEL_KEYS = {
    "version",
    "name",
    "include",
    "services",
    "models",
    "networks",
    "volumes",
    "secrets",
    "configs",
}
SERVICE_KEYS = {
    "develop",
    "deploy",
    "annotations",
    "attach",
    "build",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "label_file",
    "environment",
    "expose",
    "extends",
    "provider",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "models",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "pull_policy",
    "pull_refresh_after",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "security_opt",
    "shm_size",
    "secrets",
    "sysctls",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "uts",
    "userns_mode",
    "volumes",
    "volumes_from",
    "working_dir",
}
BUILD_KEYS = {
    "context",
    "dockerfile",
    "dockerfile_inline",
    "entitlements",
    "args",
    "ssh",
    "labels",
    "cache_from",
    "cache_to",
    "no_cache",
    "additional_contexts",
    "network",
    "pull",
    "target",
    "shm_size",
    "extra_hosts",
    "isolation",
    "privileged",
    "secrets",
    "tags",
    "ulimits",
    "platforms",
}
HEALTHCHECK_KEYS = {
    "disable",
    "interval",
    "retries",
    "test",
    "timeout",
    "start_period",
    "start_interval",
}
DEPENDS_ON_KEYS = {"condition", "restart", "required"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
PINNED_TAG = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+$")


# ── helpers ──────────────────────────────────────────────────────────────────


def load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


# ${VAR:?message}: `docker compose` refuses to start while VAR is unset or empty.
REQUIRED_VARIABLE = re.compile(r"^\$\{(\w+):\?[^}]+\}$")


def interpolate(value: object) -> str:
    """Compose's ${VAR:-default} with VAR unset, as `docker compose config` would; a
    required ${VAR:?message} becomes ``<VAR>``, standing for the value the user sets."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    text = re.sub(r"\$\{(\w+):?\?[^}]*\}", lambda m: f"<{m.group(1)}>", text)
    text = re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)
    return text.replace("$$", "$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(v) for k, v in env.items()}


def listeners(spec: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,…' → {NAME: (host, port)}."""
    out = {}
    for item in spec.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Each port mapping as (host_ip, published, target)."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        target = int(parts[-1])
        published = int(parts[-2]) if len(parts) >= 2 else target
        out.append((parts[-3] if len(parts) == 3 else "", published, target))
    return out


def mounts(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """Each volume as (named volume or None, target)."""
    out: list[tuple[str | None, str]] = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source = volume.get("source") if volume.get("type") == "volume" else None
            out.append((source, volume["target"]))
            continue
        parts = str(volume).split(":")
        if len(parts) == 1:
            out.append((None, parts[0]))  # anonymous volume
        elif parts[0].startswith(("/", ".", "~")):
            out.append((None, parts[1]))  # bind mount
        else:
            out.append((parts[0], parts[1]))
    return out


def settings_classes(service: str) -> list[type[BaseSettings]]:
    """The shared Settings and TelemetrySettings, and the service's own
    (``podium_<service>.settings``) if any."""
    classes: list[type[BaseSettings]] = [Settings, TelemetrySettings]
    name = f"podium_{service}.settings"
    if importlib.util.find_spec(name) is not None:
        module = importlib.import_module(name)
        classes += [
            c
            for c in vars(module).values()
            if isinstance(c, type) and issubclass(c, BaseSettings) and c.__module__ == name
        ]
    return classes


def settings_problems(where: str, service: str, env: dict[str, str]) -> list[str]:
    """Every PODIUM_* variable is a field of a settings class, with a valid value."""
    claimed: set[str] = set()
    problems = []
    for cls in settings_classes(service):
        prefix = str(cls.model_config.get("env_prefix", ""))
        values = {
            k.removeprefix(prefix).lower(): v
            for k, v in env.items()
            if k.startswith(prefix) and k.removeprefix(prefix).lower() in cls.model_fields
        }
        claimed |= {prefix + k.upper() for k in values}
        try:
            cls.model_validate(values)
        except ValueError as exc:
            problems.append(f"{where}: invalid settings: {exc}")
    unknown = sorted(k for k in env if k.startswith("PODIUM_") and k not in claimed)
    if unknown:
        problems.append(f"{where}: unknown settings {unknown}")
    return problems


def seconds(duration: str) -> float:
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ── compose checks ───────────────────────────────────────────────────────────


def spec_problems(doc: dict[str, Any]) -> list[str]:
    """Keys and enumerations of the Compose Specification."""
    problems = [
        f"unknown top-level key {k!r}"
        for k in doc
        if k not in TOP_LEVEL_KEYS and not k.startswith("x-")
    ]
    services = doc.get("services") or {}
    declared_volumes = set(doc.get("volumes") or {})
    for name, svc in services.items():
        where = f"services.{name}"
        problems += [
            f"{where}: unknown key {k!r}"
            for k in svc
            if k not in SERVICE_KEYS and not k.startswith("x-")
        ]
        if "image" not in svc and "build" not in svc:
            problems.append(f"{where}: neither image nor build")
        build = svc.get("build")
        if isinstance(build, dict):
            problems += [
                f"{where}.build: unknown key {k!r}"
                for k in build
                if k not in BUILD_KEYS and not k.startswith("x-")
            ]
        check = svc.get("healthcheck")
        if check is not None:
            problems += [
                f"{where}.healthcheck: unknown key {k!r}"
                for k in check
                if k not in HEALTHCHECK_KEYS and not k.startswith("x-")
            ]
            test = check.get("test")
            if isinstance(test, list) and (not test or test[0] not in {"CMD", "CMD-SHELL", "NONE"}):
                problems.append(f"{where}.healthcheck.test must start with CMD, CMD-SHELL or NONE")
            for key in ("interval", "timeout", "start_period", "start_interval"):
                if key in check:
                    try:
                        seconds(str(check[key]))
                    except AssertionError as exc:
                        problems.append(f"{where}.healthcheck.{key}: {exc}")
        if "restart" in svc and not RESTART.match(str(svc["restart"])):
            problems.append(f"{where}.restart: invalid policy {svc['restart']!r}")
        depends = svc.get("depends_on") or {}
        for dep, cond in (
            depends.items() if isinstance(depends, dict) else ((d, None) for d in depends)
        ):
            if dep not in services:
                problems.append(f"{where}.depends_on: no service {dep!r}")
            if isinstance(cond, dict):
                problems += [
                    f"{where}.depends_on.{dep}: unknown key {k!r}"
                    for k in cond
                    if k not in DEPENDS_ON_KEYS and not k.startswith("x-")
                ]
                if cond.get("condition") not in CONDITIONS:
                    problems.append(
                        f"{where}.depends_on.{dep}: bad condition {cond.get('condition')!r}"
                    )
        for source, _ in mounts(svc):
            if source is not None and source not in declared_volumes:
                problems.append(f"{where}: volume {source!r} is not declared at top level")
    return problems


def kafka_problems(doc: dict[str, Any]) -> list[str]:
    """A coherent single-node KRaft broker (apache/kafka image settings)."""
    kafka = (doc.get("services") or {}).get(KAFKA)
    if kafka is None:
        return [f"no {KAFKA!r} service"]
    problems = []
    image = str(kafka.get("image", ""))
    if not image.startswith("apache/kafka:") or not PINNED_TAG.match(image):
        problems.append(f"kafka: image {image!r} is not apache/kafka pinned to x.y.z")
    elif image != f"apache/kafka:{KAFKA_VERSION}":
        problems.append(
            f"kafka: image {image!r} is not the reference broker the tests run, {KAFKA_VERSION}"
        )
    env = environment(kafka)
    required = (
        "KAFKA_NODE_ID",
        "KAFKA_PROCESS_ROLES",
        "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
        "KAFKA_INTER_BROKER_LISTENER_NAME",
    )
    missing = [k for k in required if k not in env]
    if missing:
        return [*problems, f"kafka: missing {', '.join(missing)}"]

    if set(env["KAFKA_PROCESS_ROLES"].split(",")) != {"broker", "controller"}:
        problems.append("kafka: a single node must be broker,controller")
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controllers = set(env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(","))
    if not set(advertised) <= set(bound):
        problems.append(
            f"kafka: advertised listeners {sorted(set(advertised) - set(bound))} "
            "are not in KAFKA_LISTENERS"
        )
    if controllers & set(advertised):
        problems.append("kafka: the controller listener must not be advertised to clients")
    if not controllers <= set(bound):
        problems.append("kafka: KAFKA_CONTROLLER_LISTENER_NAMES not in KAFKA_LISTENERS")
    if not set(bound) <= set(protocols):
        problems.append("kafka: a listener has no KAFKA_LISTENER_SECURITY_PROTOCOL_MAP entry")
    if env["KAFKA_INTER_BROKER_LISTENER_NAME"] not in set(advertised) - controllers:
        problems.append("kafka: KAFKA_INTER_BROKER_LISTENER_NAME is not an advertised listener")
    controller_ports = {bound[c][1] for c in controllers if c in bound}
    hostnames = {KAFKA, kafka.get("hostname", KAFKA), "localhost"}
    voters = [v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")]
    node_id = env["KAFKA_NODE_ID"]
    if [v[0] for v in voters] != [node_id]:
        problems.append(
            f"kafka: quorum voters {env['KAFKA_CONTROLLER_QUORUM_VOTERS']!r} "
            f"are not just node {node_id}"
        )
    for _, address in voters:
        host, _, port = address.rpartition(":")
        if host not in hostnames or int(port) not in controller_ports:
            problems.append(
                f"kafka: quorum voter {address!r} is not this node's "
                f"controller listener (ports {sorted(controller_ports)})"
            )

    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        if env.get(key) != "1":
            problems.append(f"kafka: {key} must be 1 on a single broker")
    if env.get("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS") != "0":
        problems.append("kafka: KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS should be 0")
    if env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") != "false":
        problems.append("kafka: auto topic creation must be off (podium creates its topics)")

    for _, published, target in published_ports(kafka):
        names = [n for n, (_, p) in bound.items() if p == target and n not in controllers]
        if not names:
            problems.append(f"kafka: published port {target} is no client listener")
        elif advertised.get(names[0]) != ("localhost", published):
            problems.append(
                f"kafka: listener {names[0]} on published port {published} must be "
                f"advertised as localhost:{published}"
            )

    check = kafka.get("healthcheck") or {}
    test = (
        " ".join(check.get("test") or [])
        if isinstance(check.get("test"), list)
        else str(check.get("test", ""))
    )
    match = re.search(r"kafka-broker-api-versions\.sh --bootstrap-server localhost:(\d+)", test)
    if not match:
        problems.append("kafka: healthcheck must run kafka-broker-api-versions.sh")
    elif int(match.group(1)) not in {p for n, (_, p) in bound.items() if n not in controllers}:
        problems.append(f"kafka: healthcheck port {match.group(1)} is no client listener")
    return problems


def podium_problems(doc: dict[str, Any]) -> list[str]:
    """The five services: built from their Dockerfiles, wired to kafka, valid settings."""
    services = doc.get("services") or {}
    kafka = services.get(KAFKA) or {}
    kafka_env = environment(kafka)
    internal = {
        f"{h}:{p}"
        for h, p in listeners(kafka_env.get("KAFKA_ADVERTISED_LISTENERS", "X://x:0")).values()
        if h in {KAFKA, kafka.get("hostname", KAFKA)}
    }
    problems = []
    for name in SERVICES:
        svc = services.get(name)
        where = f"services.{name}"
        if svc is None:
            problems.append(f"no service {name!r}")
            continue
        build = svc.get("build") or {}
        context = REPO / str(build.get("context", "."))
        dockerfile = build.get("dockerfile")
        if dockerfile != DOCKERFILE:
            problems.append(f"{where}: builds from {dockerfile!r}, not {DOCKERFILE}")
        elif not (context / dockerfile).is_file():
            problems.append(f"{where}: {context / dockerfile} does not exist")
        if (build.get("args") or {}).get("SERVICE") != name:
            problems.append(f"{where}: build.args.SERVICE must be {name!r}")
        if context.resolve() != REPO:
            problems.append(f"{where}: the build context must be the repository root")
        depends = svc.get("depends_on") or {}
        if (
            not isinstance(depends, dict)
            or (depends.get(KAFKA) or {}).get("condition") != "service_healthy"
        ):
            problems.append(f"{where}: must depend on kafka with condition service_healthy")
        if not RESTART.match(str(svc.get("restart", ""))) or svc.get("restart") == "no":
            problems.append(f"{where}: needs a restart policy")
        grace = svc.get("stop_grace_period")
        if grace is None or seconds(str(grace)) <= 10:
            problems.append(
                f"{where}: stop_grace_period must be longer than Docker's 10s "
                "(services drain on SIGTERM)"
            )

        env = environment(svc)
        bad = settings_problems(where, name, env)
        if bad:
            problems += bad
            continue
        settings = shared_settings(env)
        assert settings is not None  # settings_problems found none
        bootstrap = (settings.kafka_bootstrap or "").split(",")
        if not internal or not set(bootstrap) <= internal:
            problems.append(
                f"{where}: PODIUM_KAFKA_BOOTSTRAP {settings.kafka_bootstrap!r} is not "
                f"kafka's in-network advertised listener {sorted(internal)}"
            )
        if settings.producer_idempotence == "false":
            problems.append(f"{where}: PODIUM_PRODUCER_IDEMPOTENCE should be auto or true on Kafka")
        if settings.fetch_max_wait_ms < 100:
            problems.append(f"{where}: PODIUM_FETCH_MAX_WAIT_MS is the Tansu value; use ~500")
        if any(s is not None and t == str(settings.home) for s, t in mounts(svc)):
            problems.append(
                f"{where}: a named volume on PODIUM_HOME {settings.home} would be shared by "
                "replicas (their readiness files); the state belongs in PostgreSQL"
            )
        if name == "router" and "PODIUM_WORKFLOWS" not in env:
            problems.append(f"{where}: PODIUM_WORKFLOWS is not set")
        if name == API:
            problems += api_problems(where, svc, env)
            problems += scaling_problems(where, svc, ("container_name", "hostname"))
        else:
            problems += scaling_problems(where, svc)
    return problems


def scaling_problems(
    where: str, svc: dict[str, Any], keys: tuple[str, ...] = ("container_name", "hostname", "ports")
) -> list[str]:
    """`docker compose up --scale <service>=N` needs nothing unique per container (what
    replicas share, the role's database and the blob store, is checked below)."""
    problems = []
    for key in keys:
        if svc.get(key):
            problems.append(f"{where}: {key} prevents --scale")
    return problems


def api_problems(where: str, svc: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The api's HTTP port: the server listens on every interface of its container, the
    port is published on the host's loopback only, and the healthcheck asks /healthz."""
    from podium_api.settings import ApiSettings

    api = ApiSettings.model_validate(
        {
            k.removeprefix("PODIUM_API_").lower(): v
            for k, v in env.items()
            if k.startswith("PODIUM_API_")
            and k.removeprefix("PODIUM_API_").lower() in ApiSettings.model_fields
        }
    )
    problems = []
    if api.host != "0.0.0.0":
        problems.append(
            f"{where}: PODIUM_API_HOST must be 0.0.0.0 in a container (not {api.host!r})"
        )
    ports = published_ports(svc)
    if not any(target == api.port for _, _, target in ports):
        problems.append(f"{where}: no published port reaches PODIUM_API_PORT {api.port}")
    problems += [
        f"{where}: port {published} is published on {host or 'every interface'}, not on 127.0.0.1"
        for host, published, _ in ports
        if host != "127.0.0.1"
    ]
    check = svc.get("healthcheck") or {}
    test = check.get("test") or []
    command = " ".join(str(t) for t in test) if isinstance(test, list) else str(test)
    if f"http://127.0.0.1:{api.port}/healthz" not in command:
        problems.append(f"{where}: the healthcheck must ask http://127.0.0.1:{api.port}/healthz")
    # The services export spans to the collector, which sends them to Jaeger; the api has
    # no span files to read there, so a run's trace must come from Jaeger's query API.
    if api.trace_url != JAEGER_QUERY:
        problems.append(
            f"{where}: PODIUM_API_TRACE_URL must be {JAEGER_QUERY} (runs' traces are in Jaeger)"
        )
    return problems


COLLECTOR = "otel-collector"
JAEGER = "jaeger"
JAEGER_QUERY = "http://jaeger:16686"  # Jaeger's query API, inside the compose network


def collector_problems(doc: dict[str, Any]) -> list[str]:
    """Traces flow service → OTel collector (OTLP/HTTP) → Jaeger (OTLP/gRPC), UI on loopback."""
    services = doc.get("services") or {}
    collector, jaeger = services.get(COLLECTOR), services.get(JAEGER)
    if collector is None or jaeger is None:
        return [f"no {COLLECTOR!r} or {JAEGER!r} service"]
    problems = []
    image = str(collector.get("image", ""))
    if not image.startswith("otel/opentelemetry-collector-contrib:") or not PINNED_TAG.match(image):
        problems.append(f"{COLLECTOR}: image {image!r} is not the contrib collector pinned")
    image = str(jaeger.get("image", ""))
    if not image.startswith(
        ("jaegertracing/jaeger:", "jaegertracing/all-in-one:")
    ) or not PINNED_TAG.match(image):
        problems.append(f"{JAEGER}: image {image!r} is not Jaeger pinned to x.y.z")
    if ("127.0.0.1", 16686, 16686) not in published_ports(jaeger):
        problems.append(f"{JAEGER}: the UI must be published on 127.0.0.1:16686")
    # The collector's config: mounted from infra/, and its Jaeger exporter points at jaeger.
    config: dict[str, Any] = {}
    flags = [str(c) for c in collector.get("command") or []]
    target = next((f.split("=", 1)[1] for f in flags if f.startswith("--config=")), None)
    sources = {
        t: v.split(":")[0] for v in collector.get("volumes") or [] for t in [str(v).split(":")[1]]
    }
    if target is None or target not in sources:
        problems.append(f"{COLLECTOR}: --config is not a mounted file")
    elif not (REPO / sources[target]).is_file():
        problems.append(f"{COLLECTOR}: config {sources[target]} does not exist")
    else:
        config = yaml.safe_load((REPO / sources[target]).read_text())
    http = (((config.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get("http")
    http_port = int(str((http or {}).get("endpoint", ":0")).rsplit(":", 1)[1])
    if not http_port:
        problems.append(f"{COLLECTOR}: no OTLP/HTTP receiver")
    pipeline = ((config.get("service") or {}).get("pipelines") or {}).get("traces") or {}
    exporters = config.get("exporters") or {}
    if not any(
        str((exporters.get(e) or {}).get("endpoint", "")).startswith(f"{JAEGER}:")
        for e in pipeline.get("exporters") or []
    ):
        problems.append(f"{COLLECTOR}: the traces pipeline does not export to {JAEGER}")
    if "otlp" not in (pipeline.get("receivers") or []):
        problems.append(f"{COLLECTOR}: the traces pipeline does not receive OTLP")
    for name in SERVICES:
        svc = services.get(name) or {}
        env = environment(svc)
        if env.get("PODIUM_TRACING") != "otlp":
            problems.append(f"services.{name}: PODIUM_TRACING must be otlp")
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        if endpoint != f"http://{COLLECTOR}:{http_port}":
            problems.append(
                f"services.{name}: OTEL_EXPORTER_OTLP_ENDPOINT {endpoint!r} is not "
                f"the collector's OTLP/HTTP receiver"
            )
        if COLLECTOR not in (svc.get("depends_on") or {}):
            problems.append(f"services.{name}: must depend on {COLLECTOR}")
        port = env.get("PODIUM_METRICS_PORT", "0")
        if port == "0" or port not in [str(p) for p in svc.get("expose") or []]:
            problems.append(f"services.{name}: PODIUM_METRICS_PORT {port} is not exposed")
        if env.get("PODIUM_METRICS_HOST") != "0.0.0.0":
            problems.append(f"services.{name}: /metrics must listen on 0.0.0.0 in a container")
    return problems


# ── state, databases, Prometheus, Grafana ────────────────────────────────────

POSTGRES = "postgres"
PROMETHEUS = "prometheus"
GRAFANA = "grafana"
# An image tag naming a release: x.y or x.y.z, optionally v-prefixed or with a suffix.
RELEASE_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+(\.\d+)?(-[\w.]+)?$")
# Where each image keeps its state, and the setting (variable or flag) that moves it:
# that directory must be on a named volume, which outlives the container.
STATEFUL_IMAGES = {
    "apache/kafka": ("KAFKA_LOG_DIRS", "/tmp/kraft-combined-logs"),
    "postgres": ("PGDATA", "/var/lib/postgresql/data"),
    "prom/prometheus": ("--storage.tsdb.path", "/prometheus"),
    "grafana/grafana": ("GF_PATHS_DATA", "/var/lib/grafana"),
}
# Images that hold nothing worth keeping, and why.
STATELESS_IMAGES = {
    "otel/opentelemetry-collector-contrib": "forwards spans; its queue is in memory",
    "jaegertracing/jaeger": "in-memory storage by choice: traces are lost on restart",
}

# Parsed files the checks read, by path from the repository root; a test passes
# broken copies in `files` to show that a check catches them.
Files = dict[str, Any]


def read(path: str, files: Files) -> Any:
    """A repository file the compose file mounts: YAML/JSON parsed, anything else text."""
    if path in files:
        return files[path]
    text = (REPO / path).read_text()
    if path.endswith((".yml", ".yaml")):
        return yaml.safe_load(text)
    if path.endswith(".json"):
        return json.loads(text)
    return text


def binds(svc: dict[str, Any]) -> dict[str, str]:
    """Bind mounts as {target: source relative to the repository root}."""
    out = {}
    for volume in svc.get("volumes") or []:
        parts = str(volume).split(":")
        if len(parts) >= 2 and parts[0].startswith("./"):
            out[parts[1]] = parts[0].removeprefix("./")
    return out


def flags(svc: dict[str, Any]) -> dict[str, str]:
    """``--name=value`` items of the service's command."""
    command = svc.get("command") or []
    items = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    return dict(c.split("=", 1) for c in items if c.startswith("--") and "=" in c)


def image_name(svc: dict[str, Any]) -> str:
    return str(svc.get("image", "")).rsplit(":", 1)[0]


def under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def podium_services(doc: dict[str, Any]) -> dict[str, str]:
    """Each service built from services/Dockerfile, with its role (build.args.SERVICE):
    the four, and any further executor pool (executor-gpu, ...)."""
    return {
        name: str(((svc.get("build") or {}).get("args") or {}).get("SERVICE"))
        for name, svc in (doc.get("services") or {}).items()
        if isinstance(svc.get("build"), dict) and svc["build"].get("dockerfile") == DOCKERFILE
    }


def shared_settings(env: dict[str, str]) -> Settings | None:
    """The shared Settings of a service's environment; None when invalid (reported by
    settings_problems)."""
    try:
        return Settings.model_validate(
            {
                k.removeprefix("PODIUM_").lower(): v
                for k, v in env.items()
                if k.startswith("PODIUM_")
                and k.removeprefix("PODIUM_").lower() in Settings.model_fields
            }
        )
    except ValueError:
        return None


def executor_pool(env: dict[str, str]) -> str:
    """The pool an executor service serves (PODIUM_EXECUTOR_POOL or its old name)."""
    from podium_executor.settings import ExecutorSettings

    settings = ExecutorSettings.model_validate({k: v for k, v in env.items()})
    return settings.pool


def required_problem(where: str, key: str, raw: object) -> list[str]:
    if not REQUIRED_VARIABLE.match(str(raw)):
        return [
            f"{where}: {key} must come from the user, as ${{VAR:?message}}, "
            f"not {raw!r} written in the file"
        ]
    return []


def state_problems(doc: dict[str, Any]) -> list[str]:
    """Everything that holds state is on a named volume (an anonymous one is dropped
    when the container is re-created) or in PostgreSQL."""
    services = doc.get("services") or {}
    podium = podium_services(doc)
    dockerfile = (REPO / DOCKERFILE).read_text()
    problems = []
    blob_volumes: dict[str, str | None] = {}
    for name, svc in services.items():
        where = f"services.{name}"
        for source, target in mounts(svc):
            if source is None and target not in binds(svc):
                problems.append(
                    f"{where}: anonymous volume {target} is dropped when the container is "
                    "re-created; use a named volume"
                )
        named = {target: source for source, target in mounts(svc) if source is not None}
        if name in podium:
            # The role's database is checked by database_problems; the blob store here.
            settings = shared_settings(environment(svc))
            if settings is None:
                continue
            blobs = settings.blob_url or str(settings.home / "blobs")
            blobs = blobs.removeprefix("file://")
            target = next((t for t in named if under(blobs, t)), None)
            blob_volumes[name] = None if target is None else named[target]
            if target is None:
                problems.append(
                    f"{where}: the blob store {blobs} is not on a named volume "
                    "(dead letters' bodies would stay in one container)"
                )
            elif not re.search(rf"mkdir -p {re.escape(target)}\b.*chown -R podium", dockerfile):
                # Docker gives a new volume the owner of the folder it is mounted on, if
                # the image has that folder; else root, and the service cannot write.
                problems.append(
                    f"{where}: {DOCKERFILE} does not create {target} owned by podium, "
                    "so the volume mounted there would be root's"
                )
            continue
        image = image_name(svc)
        if image in STATELESS_IMAGES:
            continue
        if image not in STATEFUL_IMAGES:
            problems.append(
                f"{where}: image {image!r} is not classified: does it hold state? "
                "(STATEFUL_IMAGES or STATELESS_IMAGES in this test)"
            )
            continue
        setting, default = STATEFUL_IMAGES[image]
        folder = (flags(svc) if setting.startswith("--") else environment(svc)).get(
            setting, default
        )
        if not any(under(folder, target) for target in named):
            problems.append(f"{where}: its data {folder} is not on a named volume")
    shared = {v for v in blob_volumes.values() if v is not None}
    if len(shared) > 1:
        problems.append(f"podium services keep blobs on different volumes {sorted(shared)}")
    return problems


def database_problems(doc: dict[str, Any], files: Files) -> list[str]:
    """PostgreSQL with one database per role and per executor pool, each made by the
    init script, and every podium service on its role's database."""
    from sqlalchemy.engine import make_url

    services = doc.get("services") or {}
    postgres = services.get(POSTGRES)
    if postgres is None:
        return [f"no {POSTGRES!r} service"]
    problems = []
    image = str(postgres.get("image", ""))
    if image_name(postgres) != "postgres" or not RELEASE_TAG.match(image):
        problems.append(f"{POSTGRES}: image {image!r} is not postgres pinned to a release")
    raw = postgres.get("environment") or {}
    problems += required_problem(POSTGRES, "POSTGRES_PASSWORD", raw.get("POSTGRES_PASSWORD"))
    if not postgres.get("healthcheck"):
        problems.append(f"{POSTGRES}: no healthcheck (the services wait for it)")
    env = environment(postgres)
    created = set(env.get("PODIUM_DATABASES", "").split())
    scripts = [s for t, s in binds(postgres).items() if under(t, "/docker-entrypoint-initdb.d")]
    if not scripts:
        problems.append(f"{POSTGRES}: no init script in /docker-entrypoint-initdb.d")
    for script in scripts:
        if not (REPO / script).is_file():
            problems.append(f"{POSTGRES}: init script {script} does not exist")
            continue
        text = read(script, files)
        if (
            not re.search(r"for \w+ in \$\{?PODIUM_DATABASES\}?", text)
            or "CREATE DATABASE" not in text
        ):
            problems.append(f"{POSTGRES}: {script} does not create each of PODIUM_DATABASES")

    owners: dict[str, set[str]] = {}  # database → the roles (executor:<pool>) on it
    used: dict[str, set[str]] = {}  # role → its databases
    for name, role in podium_services(doc).items():
        svc = services[name]
        where = f"services.{name}"
        senv = environment(svc)
        settings = shared_settings(senv)
        if settings is None or role not in SERVICES:
            continue  # reported by podium_problems
        try:
            url = make_url(settings.database_url(role))  # type: ignore[arg-type]
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        variable = f"PODIUM_{role.upper()}_DATABASE_URL"
        if not url.drivername.startswith("postgresql"):
            problems.append(
                f"{where}: its database is {url.drivername} (a file in each container, not "
                f"shared by replicas); set {variable} to the {POSTGRES} service"
            )
            continue
        if url.host != POSTGRES or (url.port or 5432) != 5432:
            problems.append(f"{where}: {variable} points at {url.host}, not {POSTGRES}:5432")
        if url.database not in created:
            problems.append(
                f"{where}: database {url.database!r} is not created by the init script "
                f"(PODIUM_DATABASES of {POSTGRES}: {sorted(created)})"
            )
        if url.password is None and senv.get("PGPASSWORD") != env.get("POSTGRES_PASSWORD"):
            problems.append(f"{where}: PGPASSWORD is not {POSTGRES}'s POSTGRES_PASSWORD")
        if ((svc.get("depends_on") or {}).get(POSTGRES) or {}).get("condition") != (
            "service_healthy"
        ):
            problems.append(f"{where}: must depend on {POSTGRES} with condition service_healthy")
        key = f"executor pool {executor_pool(senv)!r}" if role == "executor" else role
        used.setdefault(key, set()).add(str(url.database))
        owners.setdefault(str(url.database), set()).add(key)
    for key, databases in sorted(used.items()):
        if len(databases) > 1:
            problems.append(
                f"{key}: replicas must share one database, but they use {sorted(databases)}"
            )
    for database, keys in sorted(owners.items()):
        if len(keys) > 1:
            problems.append(f"database {database!r} is shared by {sorted(keys)}: one per role")
    return problems


def prometheus_problems(doc: dict[str, Any], files: Files) -> list[str]:
    """Prometheus scrapes every replica of every podium service: DNS service discovery
    (type A) over the compose service names, at each service's PODIUM_METRICS_PORT."""
    services = doc.get("services") or {}
    prometheus = services.get(PROMETHEUS)
    if prometheus is None:
        return [f"no {PROMETHEUS!r} service"]
    problems = []
    image = str(prometheus.get("image", ""))
    if image_name(prometheus) != "prom/prometheus" or not RELEASE_TAG.match(image):
        problems.append(f"{PROMETHEUS}: image {image!r} is not prom/prometheus pinned")
    target = flags(prometheus).get("--config.file", "/etc/prometheus/prometheus.yml")
    source = binds(prometheus).get(target)
    if source is None or not (REPO / source).is_file():
        return [*problems, f"{PROMETHEUS}: its config {target} is not a file mounted from here"]
    config = read(source, files) or {}
    # (names, port) that each scrape job discovers by A records, on /metrics over http.
    discovered: list[tuple[set[str], int]] = []
    for job in config.get("scrape_configs") or []:
        if job.get("metrics_path", "/metrics") != "/metrics" or job.get("scheme", "http") != "http":
            continue
        for sd in job.get("dns_sd_configs") or []:
            if sd.get("type", "SRV") != "A":
                problems.append(
                    f"{PROMETHEUS}: job {job.get('job_name')!r} asks for SRV records; "
                    "compose's DNS answers type A"
                )
                continue
            names = set(sd.get("names") or [])
            unknown = sorted(names - set(services))
            if unknown:
                problems.append(f"{PROMETHEUS}: dns_sd_configs names no service {unknown}")
            discovered.append((names, int(sd.get("port", 0))))
    for name in podium_services(doc):
        port = int(environment(services[name]).get("PODIUM_METRICS_PORT", "0"))
        if not any(name in names and port == p for names, p in discovered):
            problems.append(
                f"services.{name}: not scraped by {PROMETHEUS} (no dns_sd_configs of type A "
                f"naming it on port {port})"
            )
    return problems


def grafana_problems(doc: dict[str, Any], files: Files) -> list[str]:
    """Grafana provisioned with Prometheus as its default data source and the dashboard."""
    services = doc.get("services") or {}
    grafana = services.get(GRAFANA)
    if grafana is None:
        return [f"no {GRAFANA!r} service"]
    problems = []
    image = str(grafana.get("image", ""))
    if image_name(grafana) != "grafana/grafana" or not RELEASE_TAG.match(image):
        problems.append(f"{GRAFANA}: image {image!r} is not grafana/grafana pinned")
    raw = grafana.get("environment") or {}
    problems += required_problem(
        GRAFANA, "GF_SECURITY_ADMIN_PASSWORD", raw.get("GF_SECURITY_ADMIN_PASSWORD")
    )
    mounted = binds(grafana)
    folder = environment(grafana).get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning")
    provisioning = mounted.get(folder)
    if provisioning is None or not (REPO / provisioning).is_dir():
        return [*problems, f"{GRAFANA}: {folder} is not a folder mounted from here"]

    def documents(kind: str) -> list[dict[str, Any]]:
        paths = sorted((REPO / provisioning / kind).glob("*.y*ml"))
        return [read(str(p.relative_to(REPO)), files) or {} for p in paths]

    prometheus = services.get(PROMETHEUS) or {}
    address = flags(prometheus).get("--web.listen-address", ":9090")
    url = f"http://{PROMETHEUS}:{address.rsplit(':', 1)[1]}"
    sources = [d for doc_ in documents("datasources") for d in doc_.get("datasources") or []]
    if not any(
        d.get("type") == "prometheus"
        and str(d.get("url", "")).rstrip("/") == url
        and d.get("isDefault") is True
        for d in sources
    ):
        problems.append(
            f"{GRAFANA}: no default data source of type prometheus at {url} "
            "(the dashboard's datasource variable picks the default one)"
        )
    folders = [
        str((p.get("options") or {}).get("path", ""))
        for doc_ in documents("dashboards")
        for p in doc_.get("providers") or []
        if p.get("type", "file") == "file"
    ]
    dashboard = "infra/grafana/podium-dashboard.json"
    if not any(
        source == dashboard and any(f and under(target, f) for f in folders)
        for target, source in mounted.items()
    ):
        problems.append(
            f"{GRAFANA}: {dashboard} is not mounted in a dashboard provider's folder {folders}"
        )
    board = read(dashboard, files)
    variables = {
        v["name"]
        for v in (board.get("templating") or {}).get("list") or []
        if v.get("type") == "datasource" and v.get("query") == "prometheus"
    }
    uids = {
        str((item.get("datasource") or {}).get("uid"))
        for panel in board.get("panels") or []
        for item in [panel, *(panel.get("targets") or [])]
        if item.get("datasource")
    }
    bad = sorted(u for u in uids if u.removeprefix("${").removesuffix("}") not in variables)
    if bad:
        problems.append(f"{GRAFANA}: dashboard panels name data sources {bad}, not a variable")
    return problems


def compose_problems(doc: dict[str, Any], files: Files | None = None) -> list[str]:
    files = files or {}
    return (
        spec_problems(doc)
        + kafka_problems(doc)
        + podium_problems(doc)
        + collector_problems(doc)
        + state_problems(doc)
        + database_problems(doc, files)
        + prometheus_problems(doc, files)
        + grafana_problems(doc, files)
    )


# ── Dockerfile checks ────────────────────────────────────────────────────────


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            ins, _, rest = line.strip().partition(" ")
            out.append((ins.upper(), rest.strip()))
    return out


def dockerignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(c, p) or (p.startswith("**/") and fnmatch.fnmatch(c, p[3:]))
        for p in patterns
        for c in prefixes
    )


def workspace_pyprojects() -> set[str]:
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    members = root["tool"]["uv"]["workspace"]["members"]
    found = {"pyproject.toml"}
    for pattern in members:
        found |= {str(p.relative_to(REPO)) for p in REPO.glob(f"{pattern}/pyproject.toml")}
    return found


def dockerfile_problems(name: str, text: str) -> list[str]:
    """The problems of the Dockerfile built with ``--build-arg SERVICE=<name>``."""
    where = f"{DOCKERFILE} (SERVICE={name})"
    steps = instructions(text)
    # Global ARG defaults; a stage's bare `ARG NAME` only brings the default into scope.
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    problems = []
    if not any(i == "ARG" and a.split("=")[0] == "SERVICE" for i, a in steps):
        problems.append(f"{where}: no ARG SERVICE")
    elif "SERVICE" in args:
        problems.append(f"{where}: ARG SERVICE has a default; a build must name its service")
    args["SERVICE"] = name

    def expand(s: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s)

    project = tomllib.loads((REPO / "services" / name / "pyproject.toml").read_text())
    package = project["project"]["name"]
    syncs = [expand(a) for i, a in steps if i == "RUN" and "uv sync" in a]
    if not syncs:
        problems.append(f"{where}: no uv sync")
    for run in syncs:
        if f"--package {package}" not in run or "--locked" not in run or "--no-dev" not in run:
            problems.append(f"{where}: `{run}` must be --locked --no-dev --package {package}")

    froms = [expand(a).split()[0] for i, a in steps if i == "FROM"]
    if len(froms) < 2:
        problems.append(f"{where}: not a multi-stage build")
    problems += [
        f"{where}: FROM {f} is not pinned" for f in froms if ":" not in f or f.endswith(":latest")
    ]
    copies = [expand(a).split() for i, a in steps if i == "COPY"]
    uv = [c for c in copies if any(w.startswith("--from=ghcr.io/astral-sh/uv") for w in c)]
    if not uv or not any(
        re.fullmatch(r"--from=ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", w) for w in uv[0]
    ):
        problems.append(f"{where}: uv must come from ghcr.io/astral-sh/uv:<x.y.z>")
    sources = [
        s
        for c in copies
        if not any(w.startswith("--from") for w in c)
        for s in [w for w in c if not w.startswith("--")][:-1]
    ]
    for source in sources:
        if not (REPO / source).exists():
            problems.append(f"{where}: COPY {source} does not exist")
        elif dockerignored(source):
            problems.append(f"{where}: COPY {source} is excluded by .dockerignore")
    missing = workspace_pyprojects() - set(sources)
    if missing:
        problems.append(
            f"{where}: uv sync --package needs every workspace pyproject.toml; "
            f"missing {sorted(missing)}"
        )

    final_stage = steps[max(n for n, (i, _) in enumerate(steps) if i == "FROM") :]
    users = [a for i, a in final_stage if i == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append(f"{where}: the runtime stage must run as a non-root USER")
    cmd = [a for i, a in steps if i == "CMD"]
    module = f"podium_{name}"
    # CMD cannot expand a build argument: it runs a script the build writes.
    entry = [
        expand(a).replace("%s", name, 1)
        for i, a in steps
        if i == "RUN" and "/app/.venv/bin/podium-service" in a and '"${SERVICE}"' in a
    ]
    if not cmd or json.loads(cmd[-1]) != ["podium-service"]:
        problems.append(f'{where}: CMD must be ["podium-service"]')
    if not any(f"exec python -m {module} " in e for e in entry):
        problems.append(f"{where}: podium-service must exec python -m {module}")
    if not (REPO / "services" / name / "src" / module / "__main__.py").is_file():
        problems.append(f"{where}: {module}.__main__ does not exist")
    env = dict(kv.split("=", 1) for i, a in steps if i == "ENV" for kv in shlex.split(a))
    problems += settings_problems(f"{where}: ENV", name, env)
    for key, value in env.items():
        if key == "PODIUM_WORKFLOWS" and not any(
            c[-1].rstrip("/") == value.rstrip("/") and "workflows/" in c for c in copies
        ):
            problems.append(f"{where}: PODIUM_WORKFLOWS={value} but workflows/ is not copied there")
    return problems


# ── tests ────────────────────────────────────────────────────────────────────


def test_compose_file_is_coherent() -> None:
    assert compose_problems(load_compose()) == []


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_is_coherent(name: str) -> None:
    path = REPO / DOCKERFILE
    assert path.is_file()
    assert dockerfile_problems(name, path.read_text()) == []


def test_router_image_carries_the_workflows_compose_points_at() -> None:
    router = load_compose()["services"]["router"]
    folder = environment(router)["PODIUM_WORKFLOWS"]
    text = (REPO / DOCKERFILE).read_text()
    assert f"COPY workflows/ {folder.rstrip('/')}/" in text
    assert any((REPO / "workflows").glob("*.yaml"))


Mutation = Callable[[dict[str, Any]], None]


def _svc(doc: dict[str, Any], name: str) -> dict[str, Any]:
    svc: dict[str, Any] = doc["services"][name]
    return svc


def _env(doc: dict[str, Any], name: str) -> dict[str, Any]:
    env: dict[str, Any] = _svc(doc, name)["environment"]
    return env


# A mutation may also break a file the compose file mounts: it puts the broken copy,
# by path, under this key of the document, and the test hands it to the checks.
FILES_KEY = "x-test-files"
PROMETHEUS_CONFIG = "infra/prometheus/prometheus.yml"
GRAFANA_DATASOURCES = "infra/grafana/provisioning/datasources/prometheus.yaml"
GRAFANA_DASHBOARDS = "infra/grafana/provisioning/dashboards/podium.yaml"
DASHBOARD = "infra/grafana/podium-dashboard.json"
INIT_SCRIPT = "infra/postgres/initdb/podium-databases.sh"


def _broken(doc: dict[str, Any], path: str, change: Callable[[Any], object]) -> None:
    """Hand the checks a changed copy of a mounted file's parsed content."""
    content = copy.deepcopy(read(path, {}))
    change(content)
    doc.setdefault(FILES_KEY, {})[path] = content


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "executor container_name": (
        lambda d: _svc(d, "executor").update(container_name="podium-executor"),
        "--scale",
    ),
    "executor published port": (
        lambda d: _svc(d, "executor").update(ports=["8000:8000"]),
        "--scale",
    ),
    "api without a container name to spare": (
        lambda d: _svc(d, "api").update(container_name="podium-api"),
        "--scale",
    ),
    "api on every interface of the host": (
        lambda d: _svc(d, "api").update(ports=["8780:8780"]),
        "not on 127.0.0.1",
    ),
    "api published to another port": (
        lambda d: _svc(d, "api").update(ports=["127.0.0.1:8780:8000"]),
        "no published port reaches PODIUM_API_PORT",
    ),
    "api on the container's loopback": (
        lambda d: _env(d, "api").update(PODIUM_API_HOST="127.0.0.1"),
        "must be 0.0.0.0",
    ),
    "api healthcheck of the readiness file": (
        lambda d: _svc(d, "api").pop("healthcheck"),
        "/healthz",
    ),
    "api healthcheck on another port": (
        lambda d: _env(d, "api").update(PODIUM_API_PORT="8781"),
        "/healthz",
    ),
    "api setting misspelt": (
        lambda d: _env(d, "api").update(PODIUM_API_PAGEMAX="50"),
        "unknown settings",
    ),
    "api without the trace backend": (
        lambda d: _env(d, "api").pop("PODIUM_API_TRACE_URL"),
        "PODIUM_API_TRACE_URL must be http://jaeger:16686",
    ),
    "api on SQLite": (
        lambda d: _env(d, "api").pop("PODIUM_API_DATABASE_URL"),
        "not shared by replicas",
    ),
    "api database not created": (
        lambda d: _env(d, "postgres").update(
            PODIUM_DATABASES="podium_router podium_memory podium_recovery podium_executor_default"
        ),
        "'podium_api' is not created by the init script",
    ),
    "api not scraped": (
        lambda d: _broken(
            d,
            PROMETHEUS_CONFIG,
            lambda c: c["scrape_configs"][0]["dns_sd_configs"][0]["names"].remove("api"),
        ),
        "services.api: not scraped",
    ),
    "api not traced": (
        lambda d: _env(d, "api").update(PODIUM_TRACING="local"),
        "services.api: PODIUM_TRACING must be otlp",
    ),
    "executor named volume on PODIUM_HOME": (
        lambda d: _svc(d, "executor")["volumes"].append("kafka-data:/data"),
        "shared by replicas",
    ),
    "router container_name": (
        lambda d: _svc(d, "router").update(container_name="podium-router"),
        "--scale",
    ),
    "depends on kafka merely started": (
        lambda d: _svc(d, "router").update(depends_on={"kafka": {"condition": "service_started"}}),
        "service_healthy",
    ),
    "misspelt condition": (
        lambda d: _svc(d, "memory").update(depends_on={"kafka": {"condition": "service_heathy"}}),
        "bad condition",
    ),
    "misspelt service key": (
        lambda d: _svc(d, "recovery").update(healtcheck={}),
        "unknown key 'healtcheck'",
    ),
    "no kafka healthcheck": (lambda d: _svc(d, "kafka").pop("healthcheck"), "healthcheck"),
    "unpinned kafka": (lambda d: _svc(d, "kafka").update(image="apache/kafka:latest"), "pinned"),
    "kafka older than the reference": (
        lambda d: _svc(d, "kafka").update(image="apache/kafka:4.1.0"),
        "reference broker",
    ),
    "voter on the wrong port": (
        lambda d: _env(d, "kafka").update(KAFKA_CONTROLLER_QUORUM_VOTERS="1@kafka:9092"),
        "quorum voter",
    ),
    "voter is another node": (
        lambda d: _env(d, "kafka").update(KAFKA_CONTROLLER_QUORUM_VOTERS="2@kafka:9093"),
        "not just node",
    ),
    "advertised listener not bound": (
        lambda d: _env(d, "kafka").update(
            KAFKA_ADVERTISED_LISTENERS="PLAINTEXT://kafka:9092,EXTERNAL://localhost:29092"
        ),
        "not in KAFKA_LISTENERS",
    ),
    "host listener advertised wrong": (
        lambda d: _env(d, "kafka").update(
            KAFKA_ADVERTISED_LISTENERS="PLAINTEXT://kafka:9092,PLAINTEXT_HOST://kafka:29092"
        ),
        "advertised as localhost",
    ),
    "replication factor 3": (
        lambda d: _env(d, "kafka").update(KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="3"),
        "must be 1",
    ),
    "auto topic creation on": (
        lambda d: _env(d, "kafka").update(KAFKA_AUTO_CREATE_TOPICS_ENABLE="true"),
        "auto topic",
    ),
    "another service's build": (
        lambda d: _svc(d, "memory")["build"].update(args={"SERVICE": "router"}),
        "build.args.SERVICE",
    ),
    "missing Dockerfile": (
        lambda d: _svc(d, "router")["build"].update(dockerfile="services/nope/Dockerfile"),
        "builds from",
    ),
    "bootstrap is the host listener": (
        lambda d: _env(d, "router").update(PODIUM_KAFKA_BOOTSTRAP="localhost:29092"),
        "in-network advertised listener",
    ),
    "misspelt setting": (
        lambda d: _env(d, "executor").update(PODIUM_FETCH_MAX_WAIT="500"),
        "unknown settings",
    ),
    "invalid setting": (
        lambda d: _env(d, "memory").update(PODIUM_FETCH_MAX_WAIT_MS="soon"),
        "invalid settings",
    ),
    "short grace period": (
        lambda d: _svc(d, "recovery").update(stop_grace_period="5s"),
        "stop_grace_period",
    ),
    "service-specific setting misspelt": (
        lambda d: _env(d, "memory").update(PODIUM_MEMORY_RECAL_LIMIT="5"),
        "unknown settings",
    ),
    "tracing not exported": (
        lambda d: _env(d, "router").update(PODIUM_TRACING="local"),
        "must be otlp",
    ),
    "invalid tracing mode": (
        lambda d: _env(d, "memory").update(PODIUM_TRACING="jaeger"),
        "invalid settings",
    ),
    "otlp endpoint to the grpc port": (
        lambda d: _env(d, "executor").update(
            OTEL_EXPORTER_OTLP_ENDPOINT="http://otel-collector:4317"
        ),
        "OTLP/HTTP receiver",
    ),
    "unpinned collector": (
        lambda d: _svc(d, "otel-collector").update(
            image="otel/opentelemetry-collector-contrib:latest"
        ),
        "collector pinned",
    ),
    "jaeger ui on every interface": (
        lambda d: _svc(d, "jaeger").update(ports=["16686:16686"]),
        "127.0.0.1:16686",
    ),
    "collector config missing": (
        lambda d: _svc(d, "otel-collector").update(
            volumes=["./infra/nope.yaml:/etc/otelcol-contrib/config.yaml:ro"]
        ),
        "does not exist",
    ),
    "metrics port not exposed": (
        lambda d: _env(d, "recovery").update(PODIUM_METRICS_PORT="9999"),
        "not exposed",
    ),
    "undeclared volume": (
        lambda d: _svc(d, "memory").update(volumes=["nowhere:/data"]),
        "not declared",
    ),
}


def _pool(doc: dict[str, Any], name: str, pool: str, database: str) -> None:
    """Another executor service, of ``pool``, on ``database`` (created by the init script)."""
    svc = copy.deepcopy(_svc(doc, "executor"))
    svc["environment"].update(
        PODIUM_EXECUTOR_POOL=pool,
        PODIUM_EXECUTOR_DATABASE_URL=f"postgresql+psycopg://podium@postgres:5432/{database}",
    )
    doc["services"][name] = svc
    _env(doc, "postgres")["PODIUM_DATABASES"] += f" {database}"


def _scraped(doc: dict[str, Any], name: str) -> None:
    """``name`` added to Prometheus's DNS discovery (a copy of the config)."""
    _broken(
        doc,
        PROMETHEUS_CONFIG,
        lambda c: c["scrape_configs"][0]["dns_sd_configs"][0]["names"].append(name),
    )


def _unmount(doc: dict[str, Any], name: str, target_prefix: str) -> None:
    svc = _svc(doc, name)
    svc["volumes"] = [v for v in svc["volumes"] if target_prefix not in str(v)]


MUTATIONS.update(
    {
        # state
        "anonymous volume": (
            lambda d: _svc(d, "memory")["volumes"].append("/scratch"),
            "anonymous volume",
        ),
        "postgres data in the container": (
            lambda d: _unmount(d, "postgres", "/var/lib/postgresql/data"),
            "not on a named volume",
        ),
        "postgres data moved off its volume": (
            lambda d: _env(d, "postgres").update(PGDATA="/pgdata"),
            "not on a named volume",
        ),
        "kafka log dirs off the volume": (
            lambda d: _env(d, "kafka").update(KAFKA_LOG_DIRS="/tmp/kafka"),
            "not on a named volume",
        ),
        "prometheus data in the container": (
            lambda d: _unmount(d, "prometheus", ":/prometheus"),
            "not on a named volume",
        ),
        "grafana data in the container": (
            lambda d: _unmount(d, "grafana", ":/var/lib/grafana"),
            "not on a named volume",
        ),
        "an unclassified image": (
            lambda d: d["services"].update(cache={"image": "redis:7.4.1"}),
            "not classified",
        ),
        "blobs in one container": (
            lambda d: _unmount(d, "recovery", "/data/blobs"),
            "blob store",
        ),
        "blob volume on a folder the image lacks": (
            lambda d: (
                _svc(d, "router").update(volumes=["podium-blobs:/blobs"]),
                _env(d, "router").update(PODIUM_BLOB_URL="/blobs"),
            ),
            "root's",
        ),
        "blobs on separate volumes": (
            lambda d: (
                _svc(d, "router").update(volumes=["grafana-data:/data/blobs"]),
                _env(d, "router").update(PODIUM_BLOB_URL="/data/blobs"),
            ),
            "different volumes",
        ),
        # databases
        "executor on SQLite": (
            lambda d: _env(d, "executor").pop("PODIUM_EXECUTOR_DATABASE_URL"),
            "not shared by replicas",
        ),
        "router on a SQLite URL": (
            lambda d: _env(d, "router").update(PODIUM_ROUTER_DATABASE_URL="sqlite:////data/r.db"),
            "PODIUM_ROUTER_DATABASE_URL",
        ),
        "a pool split over two databases": (
            lambda d: _pool(d, "executor-b", "default", "podium_executor_default_b"),
            "replicas must share one database",
        ),
        "a pool on the old variable, another database": (
            lambda d: (
                _pool(d, "executor-b", "default", "podium_executor_b"),
                _env(d, "executor-b").pop("PODIUM_EXECUTOR_POOL"),
                _env(d, "executor-b").update(PODIUM_POOL="default"),
            ),
            "replicas must share one database",
        ),
        "two roles on one database": (
            lambda d: _env(d, "memory").update(
                PODIUM_MEMORY_DATABASE_URL="postgresql+psycopg://podium@postgres:5432/podium_router"
            ),
            "one per role",
        ),
        "two pools on one database": (
            lambda d: _pool(d, "executor-gpu", "gpu", "podium_executor_default"),
            "one per role",
        ),
        "database not created": (
            lambda d: _env(d, "postgres").update(
                PODIUM_DATABASES="podium_router podium_memory podium_executor_default"
            ),
            "not created by the init script",
        ),
        "database on another host": (
            lambda d: _env(d, "recovery").update(
                PODIUM_RECOVERY_DATABASE_URL="postgresql+psycopg://podium@db:5432/podium_recovery"
            ),
            "not postgres:5432",
        ),
        "init script not mounted": (
            lambda d: _unmount(d, "postgres", "docker-entrypoint-initdb.d"),
            "no init script",
        ),
        "init script missing": (
            lambda d: _svc(d, "postgres")["volumes"].append(
                "./infra/postgres/nope.sh:/docker-entrypoint-initdb.d/nope.sh:ro"
            ),
            "does not exist",
        ),
        "init script ignores PODIUM_DATABASES": (
            lambda d: d.update(
                {
                    FILES_KEY: {
                        INIT_SCRIPT: read(INIT_SCRIPT, {}).replace(
                            "in $PODIUM_DATABASES", "in podium_router"
                        )
                    }
                }
            ),
            "does not create each of PODIUM_DATABASES",
        ),
        "postgres password written in the file": (
            lambda d: _env(d, "postgres").update(POSTGRES_PASSWORD="podium"),
            "POSTGRES_PASSWORD must come from the user",
        ),
        "services with another password": (
            lambda d: _env(d, "memory").update(PGPASSWORD="${MEMORY_PASSWORD:?set it}"),
            "PGPASSWORD",
        ),
        "services start before postgres is healthy": (
            lambda d: _svc(d, "executor")["depends_on"].pop("postgres"),
            "must depend on postgres",
        ),
        "unpinned postgres": (
            lambda d: _svc(d, "postgres").update(image="postgres:latest"),
            "postgres pinned",
        ),
        # prometheus
        "a service not scraped": (
            lambda d: _broken(
                d,
                PROMETHEUS_CONFIG,
                lambda c: c["scrape_configs"][0]["dns_sd_configs"][0]["names"].remove("memory"),
            ),
            "services.memory: not scraped",
        ),
        "a new pool not scraped": (
            lambda d: _pool(d, "executor-gpu", "gpu", "podium_executor_gpu"),
            "services.executor-gpu: not scraped",
        ),
        "scraped on another port": (
            lambda d: (
                _env(d, "recovery").update(PODIUM_METRICS_PORT="9465"),
                _svc(d, "recovery").update(expose=["9465"]),
            ),
            "services.recovery: not scraped",
        ),
        "SRV records": (
            lambda d: _broken(
                d,
                PROMETHEUS_CONFIG,
                lambda c: c["scrape_configs"][0]["dns_sd_configs"][0].pop("type"),
            ),
            "SRV records",
        ),
        "static targets find one replica": (
            lambda d: d.update(
                {
                    FILES_KEY: {
                        PROMETHEUS_CONFIG: {
                            "scrape_configs": [
                                {
                                    "job_name": "podium",
                                    "static_configs": [
                                        {"targets": [f"{s}:9464" for s in SERVICES]}
                                    ],
                                }
                            ]
                        }
                    }
                }
            ),
            "not scraped",
        ),
        "misspelt service in discovery": (lambda d: _scraped(d, "execuotr"), "names no service"),
        "prometheus config not mounted": (
            lambda d: _unmount(d, "prometheus", "prometheus.yml"),
            "not a file mounted",
        ),
        # grafana
        "datasource at another address": (
            lambda d: _broken(
                d,
                GRAFANA_DATASOURCES,
                lambda c: c["datasources"][0].update(url="http://localhost:9090"),
            ),
            "no default data source of type prometheus",
        ),
        "datasource not the default": (
            lambda d: _broken(
                d, GRAFANA_DATASOURCES, lambda c: c["datasources"][0].pop("isDefault")
            ),
            "no default data source",
        ),
        "prometheus on another port": (
            lambda d: _svc(d, "prometheus")["command"].append("--web.listen-address=:9091"),
            "no default data source of type prometheus at http://prometheus:9091",
        ),
        "dashboard not mounted": (
            lambda d: _unmount(d, "grafana", "podium-dashboard.json"),
            "is not mounted in a dashboard provider's folder",
        ),
        "dashboard outside the provider's folder": (
            lambda d: _broken(
                d,
                GRAFANA_DASHBOARDS,
                lambda c: c["providers"][0]["options"].update(path="/var/lib/grafana/dashboards"),
            ),
            "is not mounted in a dashboard provider's folder",
        ),
        "provisioning not mounted": (
            lambda d: _unmount(d, "grafana", "/etc/grafana/provisioning"),
            "not a folder mounted",
        ),
        "dashboard panel on a fixed data source": (
            lambda d: _broken(
                d, DASHBOARD, lambda c: c["panels"][0]["datasource"].update(uid="DS_PROMETHEUS")
            ),
            "not a variable",
        ),
        "grafana admin password written in the file": (
            lambda d: _env(d, "grafana").update(GF_SECURITY_ADMIN_PASSWORD="admin"),
            "GF_SECURITY_ADMIN_PASSWORD must come from the user",
        ),
    }
)


def test_a_pool_added_as_the_guide_says_passes() -> None:
    """The counter-case of the mutations: another pool with its own service, database
    and scrape target (docs/deployment.md) has no problem."""
    doc = copy.deepcopy(load_compose())
    _pool(doc, "executor-gpu", "gpu", "podium_executor_gpu")
    _scraped(doc, "executor-gpu")
    files = doc.pop(FILES_KEY)
    assert compose_problems(doc, files) == []


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_compose_checks_catch(case: str) -> None:
    mutate, expected = MUTATIONS[case]
    doc = copy.deepcopy(load_compose())
    mutate(doc)
    files = doc.pop(FILES_KEY, {})
    problems = compose_problems(doc, files)
    assert any(expected in p for p in problems), problems


DOCKERFILE_MUTATIONS: dict[str, tuple[Callable[[str], str], str]] = {
    "a default service": (
        lambda t: t.replace("ARG SERVICE\n", "ARG SERVICE=router\n", 1),
        "ARG SERVICE",
    ),
    "literal wrong package": (
        lambda t: t.replace("--package podium-${SERVICE}", "--package podium-router"),
        "--package",
    ),
    "not --locked": (lambda t: t.replace("uv sync --locked", "uv sync"), "--locked"),
    "wrong module": (lambda t: t.replace("podium_%s", "podium_router"), "exec python -m"),
    "python run directly": (
        lambda t: t.replace('CMD ["podium-service"]', 'CMD ["python", "-m", "podium_memory"]'),
        "CMD",
    ),
    "runs as root": (lambda t: t.replace("USER podium:podium", "USER root"), "non-root"),
    "unpinned uv": (
        lambda t: re.sub(r"astral-sh/uv:[\d.]+", "astral-sh/uv:latest", t),
        "astral-sh/uv",
    ),
    "a member's pyproject not copied": (
        lambda t: t.replace("COPY services/recovery/pyproject.toml services/recovery/\n", ""),
        "every workspace pyproject.toml",
    ),
    "unknown ENV setting": (
        lambda t: t.replace("PODIUM_HOME=/data", "PODIUM_HOMEDIR=/data"),
        "unknown settings",
    ),
    "source excluded": (
        lambda t: t.replace("COPY shared/ shared/", "COPY tests/ tests/"),
        ".dockerignore",
    ),
}


@pytest.mark.parametrize("case", sorted(DOCKERFILE_MUTATIONS))
def test_dockerfile_checks_catch(case: str) -> None:
    mutate, expected = DOCKERFILE_MUTATIONS[case]
    original = (REPO / DOCKERFILE).read_text()
    broken = mutate(original)
    assert broken != original, "the mutation no longer applies to the Dockerfile"
    problems = dockerfile_problems("memory", broken)
    assert any(expected in p for p in problems), problems
