"""infra/k8s, checked offline: rendered by the real kustomize, every object
validated against the Kubernetes API schemas (kubernetes-validate) and KEDA's CRD
schemas (vendored under infra/k8s/crd-schemas), the wiring checked against what
the services do (probes, shutdown grace, databases per role and pool, lag
autoscaling within the topic's partitions; the operators' api with its HTTP port,
own Kafka principal, NetworkPolicy and Ingress, and the documented command that
makes its first token), and the result scanned by kube-score.

kustomize and kube-score are Go programs that `make setup` builds into .tools/bin
at the versions the Makefile pins. The checks are functions that return the
problems they find, so the mutation tests below show that each one fails on a
broken copy of the rendered manifests."""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import sqlalchemy as sa
import yaml

from podium_api import tokens
from podium_executor.settings import ExecutorSettings
from podium_shared.runtime import CLOSE_GRACE_S
from podium_shared.topics import Topics

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
CRD_SCHEMAS = K8S / "crd-schemas"
# The oldest Kubernetes the manifests are for: every field they use must exist there
# (matchLabelKeys in pod anti-affinity is GA from 1.33).
K8S_VERSION = "1.33.0"
ROLES = ("router", "memory", "recovery", "api")  # one Deployment each; executors: one per pool
# The operators' api: HTTP on port `http` (PODIUM_API_PORT), its own Kafka principal.
API_PRINCIPAL = "api"

Obj = dict[str, Any]


def _tool(name: str) -> Path:
    """The Go tool the Makefile pins (``<NAME>_VERSION := ...``), built by `make setup`."""
    makefile = (REPO / "Makefile").read_text()
    var = name.upper().replace("-", "_") + "_VERSION"
    found = re.search(rf"^{var} := (\S+)$", makefile, re.M)
    assert found, f"the Makefile pins no {var}"
    path = REPO / ".tools" / "bin" / f"{name}-{found[1]}"
    if not path.exists():
        pytest.fail(f"{path.relative_to(REPO)} is missing: run `make setup` (needs Go)")
    return path


@functools.cache
def _rendered(directory: Path) -> tuple[Obj, ...]:
    out = subprocess.run(
        [_tool("kustomize"), "build", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(directory: Path) -> list[Obj]:
    """A fresh copy of what ``kustomize build directory`` prints."""
    return copy.deepcopy(list(_rendered(directory)))


def _name(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(objects: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


# --- schemas ---------------------------------------------------------------------


def _closed(schema: Any) -> Any:
    """The CRD schema as the API server applies it: a field it does not declare is
    pruned (silently dropped), so a misspelt one is refused here instead."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@functools.cache
def _crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a validator of the vendored KEDA schema of that kind."""
    validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
    for path in sorted(CRD_SCHEMAS.glob("keda-*.yaml")):
        _, kind, version = path.stem.split("-")
        schema = _closed(yaml.safe_load(path.read_text()))
        # The API server checks metadata itself; the CRD schema only says "object".
        schema["properties"]["metadata"] = {"type": "object"}
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        key = (f"keda.sh/{version}", kind)
        validators[key] = cls(schema)
    return validators


def schema_problems(objects: Iterable[Obj]) -> list[str]:
    """Each object against the schema of its kind: Kubernetes' (strict: unknown
    fields are errors) or, for KEDA's kinds, the CRD's."""
    problems = []
    crds = {(api, kind.lower()): v for (api, kind), v in _crd_validators().items()}
    for obj in objects:
        crd = crds.get((obj.get("apiVersion", ""), obj.get("kind", "").lower()))
        if crd is not None:
            problems += [
                f"{_name(obj)}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in crd.iter_errors(obj)
            ]
        elif obj.get("apiVersion", "").startswith("keda.sh/"):
            problems.append(f"{_name(obj)}: no vendored KEDA schema for {obj['apiVersion']}")
        else:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except (
                kubernetes_validate.ValidationError,
                kubernetes_validate.SchemaNotFoundError,
            ) as exc:
                problems.append(f"{_name(obj)}: {exc}")
    return problems


# --- wiring ----------------------------------------------------------------------


def _pod(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def _container(deployment: Obj) -> Obj:
    (container,) = [c for c in _pod(deployment)["containers"] if c["name"] == "service"]
    return container


def _env(deployment: Obj, config: dict[str, str]) -> dict[str, Any]:
    """Name -> value (a string, or the valueFrom) as the container sees it."""
    container = _container(deployment)
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if source.get("configMapRef", {}).get("name") == "podium-config":
            env.update(config)
    for var in container.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else var["valueFrom"]
    return env


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _role(deployment: Obj) -> str:
    role: str = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
    return role


def _pool(deployment: Obj) -> str | None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return labels.get("podium.dev/pool") if _role(deployment) == "executor" else None


def _pod_problems(d: Obj, env: dict[str, Any]) -> list[str]:
    """Security context, volumes, probes and metrics of one Deployment's pod."""
    problems = []
    pod, container = _pod(d), _container(d)
    name = _name(d)
    pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    if not (pod_sc.get("runAsNonRoot") and sc.get("runAsNonRoot")):
        problems.append(f"{name}: not runAsNonRoot")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name}: the root filesystem is writable")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: allowPrivilegeEscalation is not false")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append(f"{name}: capabilities are not all dropped")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: mounts a service account token it never uses")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: volumes.get(m["name"], {}) for m in container.get("volumeMounts", [])}
    home = env.get("PODIUM_HOME")
    if "emptyDir" not in mounts.get(home, {}):
        problems.append(f"{name}: PODIUM_HOME ({home}) is not an emptyDir on the read-only root")
    blobs = env.get("PODIUM_BLOB_URL")
    if "persistentVolumeClaim" not in mounts.get(blobs, {}):
        problems.append(f"{name}: PODIUM_BLOB_URL ({blobs}) is not the shared volume")
    if _role(d) == "api":
        problems += _http_problems(d, env)
    else:
        # Ready, and started, once the consumer has joined its group: the readiness file.
        ready = f"{home}/run/*.ready"
        for probe in ("startupProbe", "readinessProbe"):
            command = " ".join(container.get(probe, {}).get("exec", {}).get("command", []))
            if ready not in command:
                problems.append(f"{name}: {probe} does not look for {ready}")
    port = env.get("PODIUM_METRICS_PORT")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if str(ports.get("metrics")) != port:
        problems.append(f"{name}: port `metrics` is not PODIUM_METRICS_PORT ({port})")
    if env.get("PODIUM_METRICS_HOST") != "0.0.0.0":
        problems.append(f"{name}: /metrics listens on loopback only: nothing can scrape it")
    live = container.get("livenessProbe", {}).get("httpGet", {})
    if (live.get("path"), live.get("port")) != ("/metrics", "metrics"):
        problems.append(f"{name}: livenessProbe is not GET /metrics on the metrics port")
    notes = d["spec"]["template"]["metadata"].get("annotations", {})
    if notes.get("prometheus.io/scrape") != "true" or notes.get("prometheus.io/port") != port:
        problems.append(f"{name}: the pods lack the Prometheus scrape annotations")
    return problems


def _http_problems(d: Obj, env: dict[str, Any]) -> list[str]:
    """The api's HTTP server: on its port `http`, beyond loopback, started and ready
    once GET /healthz answers there."""
    problems = []
    name, container = _name(d), _container(d)
    port = env.get("PODIUM_API_PORT")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if port is None or str(ports.get("http")) != port:
        problems.append(f"{name}: port `http` is not PODIUM_API_PORT ({port})")
    if env.get("PODIUM_API_HOST") != "0.0.0.0":
        problems.append(f"{name}: the HTTP server listens on loopback only: no Service reaches it")
    for probe in ("startupProbe", "readinessProbe"):
        get = container.get(probe, {}).get("httpGet", {})
        if (get.get("path"), get.get("port")) != ("/healthz", "http"):
            problems.append(f"{name}: {probe} is not GET /healthz on port `http`")
    return problems


def _grace_problems(d: Obj, env: dict[str, Any]) -> list[str]:
    """The kubelet's SIGKILL must come after the service's own shutdown: in-flight
    steps (the executor's grace), then the outbox and leaving the group."""
    needed = CLOSE_GRACE_S
    if _role(d) == "executor":
        grace = env.get("PODIUM_EXECUTOR_SHUTDOWN_GRACE_S")
        needed += (
            float(grace)
            if isinstance(grace, str)
            else ExecutorSettings.model_fields["shutdown_grace_s"].default
        )
    period = _pod(d).get("terminationGracePeriodSeconds", 30)  # Kubernetes' default
    if period <= needed:
        return [f"{_name(d)}: terminationGracePeriodSeconds {period} <= shutdown {needed} s"]
    return []


def _secret_ref(value: Any) -> tuple[str, str] | None:
    if isinstance(value, dict) and "secretKeyRef" in value:
        ref = value["secretKeyRef"]
        return ref["name"], ref["key"]
    return None


def _state_problems(deployments: list[Obj], envs: dict[str, dict[str, Any]]) -> list[str]:
    """One database per role and per executor pool, always from a Secret: every
    replica of a Deployment shares it, and no two roles or pools do."""
    problems = []
    owner: dict[tuple[str, str], str] = {}
    for d in deployments:
        name, env = _name(d), envs[_name(d)]
        var = f"PODIUM_{_role(d).upper()}_DATABASE_URL"
        ref = _secret_ref(env.get(var))
        if ref is None:
            problems.append(f"{name}: {var} is not from a Secret (a SQLite file per pod)")
        else:
            state = _pool(d) or _role(d)
            if owner.setdefault(ref, state) != state:
                problems.append(f"{name}: {var} is {ref}, which {owner[ref]} uses too")
        if _role(d) == "executor" and env.get("PODIUM_EXECUTOR_POOL") != _pool(d):
            problems.append(f"{name}: PODIUM_EXECUTOR_POOL is not its pool label {_pool(d)}")
    return problems + _principal_problems(deployments, envs)


def _principal_problems(deployments: list[Obj], envs: dict[str, dict[str, Any]]) -> list[str]:
    """Kafka credentials from Secrets; the api as its own principal, `api` (the ACLs
    `podium acls` makes for it), with a password no other Deployment has."""
    problems = []
    passwords: dict[tuple[str, str], set[str]] = {}
    for d in deployments:
        name, env = _name(d), envs[_name(d)]
        user, password = env.get("PODIUM_SASL_USERNAME"), env.get("PODIUM_SASL_PASSWORD")
        if _role(d) == "api":
            if user != API_PRINCIPAL:
                problems.append(f"{name}: PODIUM_SASL_USERNAME is {user!r}, not {API_PRINCIPAL!r}")
        elif _secret_ref(user) is None:
            problems.append(f"{name}: PODIUM_SASL_USERNAME is not from a Secret")
        ref = _secret_ref(password)
        if ref is None:
            problems.append(f"{name}: PODIUM_SASL_PASSWORD is not from a Secret")
        else:
            passwords.setdefault(ref, set()).add("api" if _role(d) == "api" else "roles")
    problems += [
        f"the api's Kafka password {ref} is another principal's too"
        for ref, who in passwords.items()
        if who == {"api", "roles"}
    ]
    return problems


def _companion_problems(objects: list[Obj], d: Obj) -> list[str]:
    """Exactly one metrics Service and one PodDisruptionBudget select its pods; the
    api's Service has its HTTP port too, which a NetworkPolicy admits."""
    problems = []
    labels = d["spec"]["template"]["metadata"]["labels"]
    services = [s for s in of_kind(objects, "Service") if _selects(s["spec"]["selector"], labels)]
    if len(services) != 1 or not any(p["name"] == "metrics" for p in services[0]["spec"]["ports"]):
        problems.append(f"{_name(d)}: not exactly one Service with a metrics port selects it")
    elif _role(d) == "api":
        ports = services[0]["spec"]["ports"]
        if not any(p["name"] == "http" and p.get("targetPort") == "http" for p in ports):
            problems.append(f"{_name(d)}: its Service has no port `http` to the pods' `http`")
    if _role(d) == "api" and not _admitted(objects, labels, "http"):
        problems.append(f"{_name(d)}: no NetworkPolicy admits connections to port `http`")
    pdbs = [
        p
        for p in of_kind(objects, "PodDisruptionBudget")
        if _selects(p["spec"]["selector"]["matchLabels"], labels)
    ]
    if len(pdbs) != 1:
        problems.append(f"{_name(d)}: {len(pdbs)} PodDisruptionBudgets select it, not 1")
    return problems


def _admitted(objects: list[Obj], labels: dict[str, str], port: str) -> bool:
    """Whether a NetworkPolicy selecting pods with ``labels`` admits ``port`` (by name)."""
    for policy in of_kind(objects, "NetworkPolicy"):
        if _selects(policy["spec"]["podSelector"].get("matchLabels", {}), labels):
            for rule in policy["spec"].get("ingress", []):
                if any(p.get("port") == port for p in rule.get("ports", [])):
                    return True
    return False


def ingress_problems(objects: list[Obj]) -> list[str]:
    """Operators reach the api from outside: an Ingress to its Service's port `http`."""
    api = next((s for s in of_kind(objects, "Service") if s["metadata"]["name"] == "api"), None)
    backends = [
        path["backend"]["service"]
        for ingress in of_kind(objects, "Ingress")
        for rule in ingress["spec"].get("rules", [])
        for path in rule.get("http", {}).get("paths", [])
        if "service" in path.get("backend", {})
    ]
    for backend in backends:
        if backend["name"] == "api" and api is not None:
            port = backend["port"]
            if any(
                p["name"] == "http" and port in ({"name": "http"}, {"number": p["port"]})
                for p in api["spec"]["ports"]
            ):
                return []
    return [f"no Ingress sends to Service api's port `http` (backends: {backends})"]


def api_admission_problems(objects: list[Obj]) -> list[str]:
    """In a deployment that has an Ingress, the api's port `http` is admitted only from
    named peers (the Ingress controller), not from anywhere."""
    return [
        f"NetworkPolicy/{policy['metadata']['name']}: admits port `http` from anywhere"
        for policy in of_kind(objects, "NetworkPolicy")
        if policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        == "api"
        for rule in policy["spec"].get("ingress", [])
        if any(p.get("port") == "http" for p in rule.get("ports", [])) and not rule.get("from")
    ]


KEDA_SASL = {"SCRAM-SHA-512": "scram_sha512", "SCRAM-SHA-256": "scram_sha256", "PLAIN": "plaintext"}


def _scaling_problems(objects: list[Obj], d: Obj, config: dict[str, str]) -> list[str]:
    """An executor pool scales on its group's lag, within its topic's partitions."""
    name, pool = _name(d), _pool(d)
    scalers = [
        s
        for s in of_kind(objects, "ScaledObject")
        if s["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"]
        and s["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    ]
    if _role(d) != "executor":
        return [f"{name}: scaled by lag, but only executor pools are"] if scalers else []
    if len(scalers) != 1 or pool is None:
        return [f"{name}: {len(scalers)} ScaledObjects target pool {pool}, not 1"]
    spec = scalers[0]["spec"]
    problems = []
    topics = Topics(config["PODIUM_TOPIC_PREFIX"])
    partitions = {t.name: t.partitions for t in topics.declarations((pool,))}[topics.steps(pool)]
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not 1 <= low <= high <= partitions:
        problems.append(
            f"{name}: replicas {low}..{high} not within 1..{partitions} "
            f"(partitions of {topics.steps(pool)}: a replica beyond them sits idle)"
        )
    if "cooldownPeriod" not in spec:
        problems.append(f"{name}: the ScaledObject sets no cooldownPeriod")
    kafka = [t for t in spec["triggers"] if t["type"] == "kafka"]
    if len(kafka) != 1:
        return [*problems, f"{name}: not scaled by exactly one kafka trigger"]
    meta = kafka[0]["metadata"]
    want = {"consumerGroup": topics.group("executor", pool), "topic": topics.steps(pool)}
    want["sasl"] = KEDA_SASL.get(config.get("PODIUM_SASL_MECHANISM", ""), "none")
    want["tls"] = "enable" if config["PODIUM_SECURITY_PROTOCOL"].endswith("SSL") else "disable"
    for key, value in want.items():
        if meta.get(key) != value:
            problems.append(f"{name}: the lag trigger's {key} is {meta.get(key)!r}, not {value!r}")
    if meta.get("bootstrapServersFromEnv") != "PODIUM_KAFKA_BOOTSTRAP":
        problems.append(f"{name}: the lag trigger does not read the pods' bootstrap servers")
    auth = kafka[0].get("authenticationRef", {}).get("name")
    if auth not in {a["metadata"]["name"] for a in of_kind(objects, "TriggerAuthentication")}:
        problems.append(f"{name}: the lag trigger's TriggerAuthentication {auth!r} is missing")
    return problems


def _secret_key_problems(objects: list[Obj], envs: dict[str, dict[str, Any]]) -> list[str]:
    """Every Secret key a pod or KEDA reads exists in the rendered Secrets."""
    keys = {
        (s["metadata"]["name"], k)
        for s in of_kind(objects, "Secret")
        for k in {**s.get("data", {}), **s.get("stringData", {})}
    }
    wanted = {
        (name, ref) for name, env in envs.items() for ref in map(_secret_ref, env.values()) if ref
    }
    wanted |= {
        (a["metadata"]["name"], (r["name"], r["key"]))
        for a in of_kind(objects, "TriggerAuthentication")
        for r in a["spec"].get("secretTargetRef", [])
    }
    return [f"{who}: Secret key {ref} does not exist" for who, ref in wanted if ref not in keys]


def wiring_problems(objects: list[Obj], *, with_secrets: bool) -> list[str]:
    """What the manifests must say about podium beyond what the schemas check."""
    (config_map,) = [
        c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == "podium-config"
    ]
    config: dict[str, str] = config_map["data"]
    deployments = of_kind(objects, "Deployment")
    envs = {_name(d): _env(d, config) for d in deployments}
    problems = []
    roles = sorted(_role(d) for d in deployments if _role(d) != "executor")
    if roles != sorted(ROLES):
        problems.append(f"Deployments of roles {roles}, not one each of {sorted(ROLES)}")
    pools = [_pool(d) for d in deployments if _role(d) == "executor"]
    if "default" not in pools or len(pools) != len(set(pools)):
        problems.append(f"executor pools {pools}: not `default` and one Deployment each")
    for d in deployments:
        problems += _pod_problems(d, envs[_name(d)])
        problems += _grace_problems(d, envs[_name(d)])
        problems += _companion_problems(objects, d)
        problems += _scaling_problems(objects, d, config)
    problems += _state_problems(deployments, envs)
    if with_secrets:
        problems += _secret_key_problems(objects, envs)
    return problems


# --- the tests -------------------------------------------------------------------


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_rendered_object_matches_its_schema(directory: Path) -> None:
    objects = render(directory)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject"} <= kinds
    assert schema_problems(objects) == []


def test_the_base_says_what_podium_needs() -> None:
    # The base names Secrets that only an overlay provides.
    assert wiring_problems(render(BASE), with_secrets=False) == []


def test_the_example_overlay_says_what_podium_needs() -> None:
    objects = render(OVERLAY)
    assert wiring_problems(objects, with_secrets=True) == []
    assert ingress_problems(objects) == []
    assert api_admission_problems(objects) == []
    pools = sorted(str(_pool(d)) for d in of_kind(objects, "Deployment") if _pool(d))
    assert pools == ["default", "gpu"]


def test_the_default_pools_ceiling_is_its_topics_partitions_in_topics_yaml() -> None:
    """infra/topics.yaml is what an operator creates the topics from."""
    declared = {
        t["name"]: t["partitions"]
        for t in yaml.safe_load((REPO / "infra/topics.yaml").read_text())["topics"]
    }
    (scaler,) = [
        s
        for s in of_kind(render(BASE), "ScaledObject")
        if s["metadata"]["name"] == "executor-default"
    ]
    assert scaler["spec"]["maxReplicaCount"] == declared["podium.steps.default.v1"]


def test_the_example_secrets_are_marked_as_placeholders() -> None:
    secrets = of_kind(render(OVERLAY), "Secret")
    assert secrets
    for secret in secrets:
        for key, value in secret["stringData"].items():
            assert "PLACEHOLDER-CHANGE-ME" in value, (secret["metadata"]["name"], key)


# The first operator token in a cluster, as docs/deployment.md tells it.
TOKEN_COMMAND = re.compile(r"^kubectl -n (\S+) exec deploy/(\S+) -c (\S+) -- (.+)$", re.M)


def test_the_documented_first_token_command_works_in_the_api_pod(tmp_path: Path) -> None:
    """The command names the api's Deployment and container in the overlay's
    namespace, and run with that pod's settings (its database on SQLite here, the
    Secrets' values made up) it prints an operator token for every tenant."""
    ((namespace, deployment, container, command),) = TOKEN_COMMAND.findall(
        (REPO / "docs" / "deployment.md").read_text()
    )
    objects = render(OVERLAY)
    api = _one(objects, "Deployment", deployment)
    assert (_role(api), api["metadata"]["namespace"]) == ("api", namespace)
    assert _container(api)["name"] == container
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "podium_api"], argv
    (config_map,) = [o for o in objects if _name(o) == "ConfigMap/podium-config"]
    env = {
        k: v if isinstance(v, str) else "made-up-secret"
        for k, v in _env(api, config_map["data"]).items()
    }
    database = tmp_path / "api.db"
    env |= {"PODIUM_HOME": str(tmp_path), "PODIUM_API_DATABASE_URL": f"sqlite:///{database}"}
    out = subprocess.run(
        [sys.executable, *argv[1:]],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            who = tokens.authenticate(conn, out.stdout.strip())
    finally:
        engine.dispose()
    assert who is not None and who.role == "operator" and who.every_tenant


# kube-score's checks that stay off, each with why:
#   container-cpu-requests-equal-limits, container-resource-requests-equal-limits,
#   container-ephemeral-storage-request-equals-limit: CPU and scratch space are
#   burstable on purpose (the services idle between bursts of records); memory,
#   which cannot be taken back, is requested up to its limit (enabled below).
# Per object (annotation kube-score/ignore): deployment-replicas on the executor pools
# (KEDA owns their count) and on memory and recovery (one replica: the layout the
# topology test proves).
KUBE_SCORE_OPTIONAL = (
    "container-seccomp-profile",
    "container-ports-check",
    "container-memory-requests-equal-limits",
)


def kube_score(objects: list[Obj], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    optional = [a for t in KUBE_SCORE_OPTIONAL for a in ("--enable-optional-test", t)]
    return subprocess.run(
        [
            _tool("kube-score"),
            "score",
            "--kubernetes-version",
            "v" + K8S_VERSION.rsplit(".", 1)[0],
            *optional,
            "--exit-one-on-warning",
            "--output-format",
            "ci",
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# The only checks objects turn off for themselves, as the comment above says.
KUBE_SCORE_IGNORED = {
    "Deployment/executor-default": "deployment-replicas",
    "Deployment/executor-gpu": "deployment-replicas",
    "Deployment/memory": "deployment-replicas",
    "Deployment/recovery": "deployment-replicas",
}


def test_kube_score_finds_nothing_in_the_example_overlay(tmp_path: Path) -> None:
    objects = render(OVERLAY)
    ignored = {
        _name(o): o["metadata"]["annotations"]["kube-score/ignore"]
        for o in objects
        if "kube-score/ignore" in o["metadata"].get("annotations", {})
    }
    assert ignored == KUBE_SCORE_IGNORED
    result = kube_score(objects, tmp_path)
    found = [
        line for line in result.stdout.splitlines() if line.startswith(("[WARNING]", "[CRITICAL]"))
    ]
    assert (result.returncode, found) == (0, []), result.stdout + result.stderr


# --- the checks fail on broken manifests ------------------------------------------


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def _set_env(objects: list[Obj], deployment: str, var: str, value: Any) -> None:
    env = _container(_one(objects, "Deployment", deployment))["env"]
    env[:] = [e for e in env if e["name"] != var] + [{"name": var, **value}]


def _trigger(objects: list[Obj], name: str) -> dict[str, str]:
    meta: dict[str, str] = _one(objects, "ScaledObject", name)["spec"]["triggers"][0]["metadata"]
    return meta


Mutation = Callable[[list[Obj]], None]

SCHEMA_MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "misspelt pod field": (
        lambda o: _pod(_one(o, "Deployment", "router")).update(terminationGracePeriod=30),
        "terminationGracePeriod",
    ),
    "probe port of the wrong type": (
        lambda o: _container(_one(o, "Deployment", "router"))["ports"][0].update(containerPort="x"),
        "containerPort",
    ),
    "ScaledObject with a misspelt field": (
        lambda o: _one(o, "ScaledObject", "executor-default")["spec"].update(maxReplicas=8),
        "maxReplicas",
    ),
    "ScaledObject without a trigger type": (
        lambda o: _one(o, "ScaledObject", "executor-default")["spec"]["triggers"][0].pop("type"),
        "'type' is a required property",
    ),
    "TriggerAuthentication ref without a key": (
        lambda o: _one(o, "TriggerAuthentication", "podium-kafka")["spec"]["secretTargetRef"][
            0
        ].pop("key"),
        "'key' is a required property",
    ),
}


@pytest.mark.parametrize("case", SCHEMA_MUTATIONS, ids=list(SCHEMA_MUTATIONS))
def test_the_schema_check_fails_on_a_broken_manifest(case: str) -> None:
    mutate, expected = SCHEMA_MUTATIONS[case]
    objects = render(OVERLAY)
    mutate(objects)
    problems = schema_problems(objects)
    assert any(expected in p for p in problems), problems


def _no_ready_probe(objects: list[Obj]) -> None:
    _container(_one(objects, "Deployment", "memory")).pop("readinessProbe")


def _executor_grace(objects: list[Obj]) -> None:
    _set_env(objects, "executor-default", "PODIUM_EXECUTOR_SHUTDOWN_GRACE_S", {"value": "25"})


WIRING_MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "database URL as a plain value": (
        lambda o: _set_env(o, "router", "PODIUM_ROUTER_DATABASE_URL", {"value": "sqlite:///x"}),
        "PODIUM_ROUTER_DATABASE_URL is not from a Secret",
    ),
    "two pools on one database": (
        lambda o: _set_env(
            o,
            "executor-gpu",
            "PODIUM_EXECUTOR_DATABASE_URL",
            {
                "valueFrom": {
                    "secretKeyRef": {"name": "podium-databases", "key": "executor-default"}
                }
            },
        ),
        "which default uses too",
    ),
    "a Secret key that does not exist": (
        lambda o: _set_env(
            o,
            "memory",
            "PODIUM_MEMORY_DATABASE_URL",
            {"valueFrom": {"secretKeyRef": {"name": "podium-databases", "key": "mem"}}},
        ),
        "('podium-databases', 'mem') does not exist",
    ),
    "Kafka password as a plain value": (
        lambda o: _set_env(o, "recovery", "PODIUM_SASL_PASSWORD", {"value": "hunter2"}),
        "PODIUM_SASL_PASSWORD is not from a Secret",
    ),
    "pool variable not the pool label": (
        lambda o: _set_env(o, "executor-gpu", "PODIUM_EXECUTOR_POOL", {"value": "default"}),
        "PODIUM_EXECUTOR_POOL is not its pool label gpu",
    ),
    "shutdown grace beyond the kill": (
        _executor_grace,
        "terminationGracePeriodSeconds 30 <= shutdown 33",
    ),
    "no readiness probe": (_no_ready_probe, "readinessProbe does not look for /data/run/*.ready"),
    "writable root": (
        lambda o: _container(_one(o, "Deployment", "router"))["securityContext"].update(
            readOnlyRootFilesystem=False
        ),
        "the root filesystem is writable",
    ),
    "PODIUM_HOME on the root filesystem": (
        lambda o: _container(_one(o, "Deployment", "router"))["volumeMounts"].pop(0),
        "PODIUM_HOME (/data) is not an emptyDir",
    ),
    "metrics on loopback": (
        lambda o: _one(o, "ConfigMap", "podium-config")["data"].update(
            PODIUM_METRICS_HOST="127.0.0.1"
        ),
        "/metrics listens on loopback only",
    ),
    "no PodDisruptionBudget": (
        lambda o: o.remove(_one(o, "PodDisruptionBudget", "recovery")),
        "0 PodDisruptionBudgets select it",
    ),
    "no metrics Service": (
        lambda o: o.remove(_one(o, "Service", "executor-gpu")),
        "not exactly one Service with a metrics port selects it",
    ),
    "more replicas than partitions": (
        lambda o: _one(o, "ScaledObject", "executor-gpu")["spec"].update(maxReplicaCount=9),
        "replicas 1..9 not within 1..8",
    ),
    "lag of another pool's group": (
        lambda o: _trigger(o, "executor-gpu").update(consumerGroup="podium-executor-default"),
        "consumerGroup is 'podium-executor-default', not 'podium-executor-gpu'",
    ),
    "lag of another topic": (
        lambda o: _trigger(o, "executor-default").update(topic="podium.steps.gpu.v1"),
        "topic is 'podium.steps.gpu.v1', not 'podium.steps.default.v1'",
    ),
    "scaler's TLS not the services'": (
        lambda o: _trigger(o, "executor-default").update(tls="disable"),
        "tls is 'disable', not 'enable'",
    ),
    "a pool without a scaler": (
        lambda o: o.remove(_one(o, "ScaledObject", "executor-default")),
        "0 ScaledObjects target pool default",
    ),
    "no cooldown": (
        lambda o: _one(o, "ScaledObject", "executor-default")["spec"].pop("cooldownPeriod"),
        "sets no cooldownPeriod",
    ),
    "no api": (
        lambda o: o.remove(_one(o, "Deployment", "api")),
        "Deployments of roles ['memory', 'recovery', 'router'], not one each of",
    ),
    "api database URL as a plain value": (
        lambda o: _set_env(o, "api", "PODIUM_API_DATABASE_URL", {"value": "sqlite:///x"}),
        "PODIUM_API_DATABASE_URL is not from a Secret",
    ),
    "api on the router's database": (
        lambda o: _set_env(
            o,
            "api",
            "PODIUM_API_DATABASE_URL",
            {"valueFrom": {"secretKeyRef": {"name": "podium-databases", "key": "router"}}},
        ),
        "is ('podium-databases', 'router'), which ",
    ),
    "api database key missing": (
        lambda o: _one(o, "Secret", "podium-databases")["stringData"].pop("api"),
        "('podium-databases', 'api') does not exist",
    ),
    "api as the roles' principal": (
        lambda o: _set_env(
            o,
            "api",
            "PODIUM_SASL_USERNAME",
            {"valueFrom": {"secretKeyRef": {"name": "podium-kafka", "key": "sasl-username"}}},
        ),
        "PODIUM_SASL_USERNAME is {'secretKeyRef':",
    ),
    "api with the roles' Kafka password": (
        lambda o: _set_env(
            o,
            "api",
            "PODIUM_SASL_PASSWORD",
            {"valueFrom": {"secretKeyRef": {"name": "podium-kafka", "key": "sasl-password"}}},
        ),
        "the api's Kafka password ('podium-kafka', 'sasl-password') is another principal's",
    ),
    "api on loopback": (
        lambda o: _one(o, "ConfigMap", "podium-config")["data"].update(PODIUM_API_HOST="127.0.0.1"),
        "Deployment/api: the HTTP server listens on loopback only",
    ),
    "api port not its http port": (
        lambda o: _one(o, "ConfigMap", "podium-config")["data"].update(PODIUM_API_PORT="9000"),
        "Deployment/api: port `http` is not PODIUM_API_PORT (9000)",
    ),
    "api ready on the readiness file": (
        lambda o: _container(_one(o, "Deployment", "api")).update(
            readinessProbe={"exec": {"command": ["sh", "-c", "test -f /data/run/api.ready"]}}
        ),
        "Deployment/api: readinessProbe is not GET /healthz on port `http`",
    ),
    "api without a startup probe": (
        lambda o: _container(_one(o, "Deployment", "api")).pop("startupProbe"),
        "Deployment/api: startupProbe is not GET /healthz on port `http`",
    ),
    "api Service without http": (
        lambda o: _one(o, "Service", "api")["spec"]["ports"].pop(0),
        "Deployment/api: its Service has no port `http`",
    ),
    "api port closed by the NetworkPolicy": (
        lambda o: o.remove(_one(o, "NetworkPolicy", "podium-api")),
        "Deployment/api: no NetworkPolicy admits connections to port `http`",
    ),
    "no api PodDisruptionBudget": (
        lambda o: o.remove(_one(o, "PodDisruptionBudget", "api")),
        "Deployment/api: 0 PodDisruptionBudgets select it",
    ),
}


@pytest.mark.parametrize("case", WIRING_MUTATIONS, ids=list(WIRING_MUTATIONS))
def test_the_wiring_check_fails_on_a_broken_manifest(case: str) -> None:
    mutate, expected = WIRING_MUTATIONS[case]
    objects = render(OVERLAY)
    mutate(objects)
    problems = wiring_problems(objects, with_secrets=True)
    assert any(expected in p for p in problems), problems


def _ingress_backend(objects: list[Obj]) -> Obj:
    backend: Obj = _one(objects, "Ingress", "api")["spec"]["rules"][0]["http"]["paths"][0][
        "backend"
    ]["service"]
    return backend


INGRESS_MUTATIONS: dict[str, Mutation] = {
    "no Ingress": lambda o: o.remove(_one(o, "Ingress", "api")),
    "to the metrics port": lambda o: _ingress_backend(o).update(port={"name": "metrics"}),
    "to the metrics port by number": lambda o: _ingress_backend(o).update(port={"number": 9464}),
    "to another Service": lambda o: _ingress_backend(o).update(name="router"),
}


@pytest.mark.parametrize("case", INGRESS_MUTATIONS, ids=list(INGRESS_MUTATIONS))
def test_the_ingress_check_fails_on_a_broken_manifest(case: str) -> None:
    objects = render(OVERLAY)
    INGRESS_MUTATIONS[case](objects)
    assert ingress_problems(objects) != []


def test_the_api_port_open_to_anywhere_is_caught() -> None:
    objects = render(OVERLAY)
    _one(objects, "NetworkPolicy", "podium-api")["spec"]["ingress"][0].pop("from")
    assert api_admission_problems(objects) == [
        "NetworkPolicy/podium-api: admits port `http` from anywhere"
    ]


# (kube-score does not look at capabilities; the wiring check does.)
KUBE_SCORE_MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "writable root": (
        lambda o: _container(_one(o, "Deployment", "router"))["securityContext"].update(
            readOnlyRootFilesystem=False
        ),
        "router/podium apps/v1/Deployment: (service) The pod has a container with a writable root",
    ),
    "no resources": (
        lambda o: _container(_one(o, "Deployment", "memory")).pop("resources"),
        "memory/podium apps/v1/Deployment: (service) Memory limit is not set",
    ),
    "no network policy": (
        lambda o: o.remove(_one(o, "NetworkPolicy", "podium")),
        "recovery/podium apps/v1/Deployment: The pod does not have a matching NetworkPolicy",
    ),
}


@pytest.mark.parametrize("case", KUBE_SCORE_MUTATIONS, ids=list(KUBE_SCORE_MUTATIONS))
def test_kube_score_fails_on_a_broken_manifest(case: str, tmp_path: Path) -> None:
    mutate, expected = KUBE_SCORE_MUTATIONS[case]
    objects = render(OVERLAY)
    mutate(objects)
    result = kube_score(objects, tmp_path)
    assert result.returncode == 1
    assert f"[CRITICAL] {expected}" in result.stdout, result.stdout
