"""deploy/k8s/ (kustomize base, gateway component, KEDA ScaledObject) checked offline against segpipe itself.

Like test_compose.py for docker-compose.yml: the manifests are read with PyYAML and held to the code (settings,
health endpoints, shutdown bound, Dockerfile user), core kinds are validated against Kubernetes' own schemas
(kubernetes-validate, strict: unknown fields are errors), and the ScaledObject against a schema written from KEDA's
documented fields (deploy/k8s/schemas/scaledobject.schema.json). Every check returns problems rather than asserting,
so the breakage tests at the end can show that each deliberate mistake is reported by the same checks the real
manifests pass. ``kubectl kustomize`` (or ``kustomize build``) confirms this file's reading of the kustomizations
where either is installed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from consumers.metrics import MetricsServer, WorkerMetrics
from consumers.state import WorkerState
from gateway.app import GatewaySettings, create_app
from pipeline.settings import ModelSettings
from schemas.registry import RegistrySettings
from segpipe.config import KafkaSettings, RedisSettings, WorkerSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
GATEWAY_COMPONENT = K8S / "gateway"
SCALEDOBJECT_SCHEMA = K8S / "schemas" / "scaledobject.schema.json"
COMPOSE_FILE = REPO / "docker-compose.yml"

# 1.27: the oldest release where the PDB's unhealthyPodEvictionPolicy is on by default; and the newest schemas known.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
CONFIGMAP = "segpipe-config"
SECRET = "segpipe-secrets"
LIBRDKAFKA_QUEUE_BYTES = 65536 * 1024  # queued.max.messages.kbytes, librdkafka's default (segpipe leaves it)
WORKER = "segpipe-worker"
REDIS = "segpipe-redis"
GATEWAY = "segpipe-gateway"
TOPICS_JOB = "segpipe-topics"
WORKER_COMMAND = ["python", "-m", "consumers.worker"]
GATEWAY_COMMAND = ["python", "-m", "gateway"]
# The worker's health routes; test_probe_paths_are_the_workers_health_routes shows they mean what the probes need.
LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"

SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    KafkaSettings,
    RedisSettings,
    WorkerSettings,
    ModelSettings,
    RegistrySettings,
    GatewaySettings,
)
# Read straight from the environment by segpipe.logs.configure_logging rather than by a settings class.
LOGGING_VARIABLES = ("LOG_LEVEL", "LOG_FORMAT")
# Where the ConfigMap departs from the code's defaults on purpose; every other value it sets must equal the default.
KUBERNETES_OVERRIDES = {
    "KAFKA_BOOTSTRAP_SERVERS",  # the cluster's brokers
    "REDIS_HOST",  # the in-cluster Redis service
    "DEVICE",  # cuda: fail without a GPU rather than run on the CPU
    "FASTSAM_MODEL_PATH",  # the /models volume
    "SAM_MODEL_PATH",
    "BATCH_SIZE",  # spelled out: 4, the GPU default
}
# Identities that default to the host name, i.e. the pod name: a value in the shared ConfigMap would give every
# replica the same client id, worker id (dedup claims) or reply topic.
PER_POD_VARIABLES = ("KAFKA_CLIENT_ID", "WORKER_ID", "GATEWAY_INSTANCE_ID")
_SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|USER_INFO|CREDENTIAL", re.IGNORECASE)
_SHELL_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")

Doc = dict[str, Any]


# --- reading the kustomizations ---------------------------------------------------------------------------------

# The only kustomization fields these manifests use, and so the only ones load() has to understand: anything else
# (patches, generators, images...) would make load() disagree with kustomize, so it is refused.
_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components"}


def load(directory: Path, *, components: tuple[Path, ...] = ()) -> list[Doc]:
    """What ``kustomize build`` gives for ``directory`` (plus ``components``), for the fields used here."""
    docs: list[Doc] = []
    for root in (directory, *components):
        kustomization = yaml.safe_load((root / "kustomization.yaml").read_text(encoding="utf-8"))
        unknown = set(kustomization) - _KUSTOMIZATION_KEYS
        assert not unknown, f"{root}: kustomization fields this test cannot follow: {sorted(unknown)}"
        for entry in kustomization.get("resources", []):
            path = root / entry
            assert path.exists(), f"{root / 'kustomization.yaml'} lists {entry}, which does not exist"
            if path.is_dir():
                docs += load(path)
            else:
                docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        for entry in kustomization.get("components", []):
            docs += load(root / entry)
    keys = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    duplicates = {key for key in keys if keys.count(key) > 1}
    assert not duplicates, f"defined twice: {sorted(duplicates)}"
    return docs


def build(*, gateway: bool = True) -> list[Doc]:
    return load(K8S, components=(GATEWAY_COMPONENT,) if gateway else ())


@pytest.fixture(scope="module")
def manifests() -> list[Doc]:
    return build()


def find(docs: list[Doc], kind: str, name: str) -> Doc | None:
    return next((d for d in docs if d.get("kind") == kind and d.get("metadata", {}).get("name") == name), None)


def pod_spec(doc: Doc) -> Doc:
    return doc["spec"]["template"]["spec"]


def container(doc: Doc) -> Doc:
    return pod_spec(doc)["containers"][0]


def config(docs: list[Doc]) -> dict[str, str]:
    configmap = find(docs, "ConfigMap", CONFIGMAP)
    return dict(configmap.get("data") or {}) if configmap else {}


def field_default(settings_class: type[BaseSettings], field: str) -> Any:
    """The declared default, unaffected by whatever the test process has in its environment."""
    return settings_class.model_fields[field].get_default(call_default_factory=True)


def env_names(settings_class: type[BaseSettings]) -> dict[str, str]:
    """Environment variable -> field, aliases included (GatewaySettings.port is also PORT)."""
    prefix = settings_class.model_config.get("env_prefix", "")
    names = {}
    for field, info in settings_class.model_fields.items():
        names[f"{prefix}{field}".upper()] = field
        alias = info.validation_alias
        for choice in getattr(alias, "choices", []) if alias is not None else []:
            if isinstance(choice, str) and choice.isupper():
                names[choice] = field
    return names


@contextmanager
def environment_only(values: dict[str, str]) -> Iterator[None]:
    """Settings classes read os.environ: show them exactly ``values`` (nothing from the test process)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def effective(docs: list[Doc], settings_class: type[BaseSettings], field: str) -> Any:
    """The value a pod with segpipe-config in its environment gets for ``field`` (the default where the ConfigMap is
    invalid: config_problems reports that, and the other checks go on)."""
    with environment_only({k: str(v) for k, v in config(docs).items()}):
        try:
            return getattr(settings_class(), field)
        except ValidationError:
            return field_default(settings_class, field)


def quantity(value: str | int) -> float:
    """Kubernetes quantities (``16Gi``, ``500m``, ``2``) as numbers."""
    text = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert match and (match[2] in units or not match[2]), f"not a quantity: {value!r}"
    return float(match[1]) * units.get(match[2], 1)


def redis_bytes(value: str) -> int:
    """Redis memory sizes (``2gb``, ``512mb``; ``gb`` is 2**30 to Redis)."""
    match = re.fullmatch(r"(\d+)(b|kb|mb|gb)?", value.strip().lower())
    assert match, f"not a Redis memory size: {value!r}"
    return int(match[1]) * {"b": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30}[match[2] or "b"]


def container_port(cont: Doc, port: int | str) -> int | None:
    """A probe's or Service's port, named or numbered, as the container port it reaches (None: no such port)."""
    ports = cont.get("ports") or []
    if isinstance(port, int):
        return port if any(p["containerPort"] == port for p in ports) else None
    return next((p["containerPort"] for p in ports if p.get("name") == port), None)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_values(cont: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in cont.get("env") or [] if "value" in e}


# The worker's whole graceful stop (drain, flush, commit, leave the group) fits in SHUTDOWN_TIMEOUT_S, and it exits
# within 2 s past it whatever it was doing: the bound tests/reliability/test_shutdown.py asserts for every state.
EXIT_MARGIN_S = 2.0


@lru_cache(maxsize=1)
def compose() -> Doc:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def dockerfile_user() -> tuple[int, int]:
    match = re.search(r"^USER\s+(\d+):(\d+)\s*$", (REPO / "Dockerfile").read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "the Dockerfile no longer runs as a numeric USER uid:gid"
    return int(match[1]), int(match[2])


@lru_cache(maxsize=1)
def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


@lru_cache(maxsize=1)
def gateway_routes() -> frozenset[str]:
    """The paths the gateway's FastAPI app serves (building the app starts nothing)."""
    return frozenset(route.path for route in create_app().routes)


# --- checks: each returns the problems it finds -----------------------------------------------------------------


@lru_cache(maxsize=512)
def _core_schema_problem(doc_json: str, version: str) -> str | None:
    doc = json.loads(doc_json)
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        return f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}) at {path}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return exc.message
    return None


@lru_cache(maxsize=1)
def _scaledobject_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCALEDOBJECT_SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_problems(docs: list[Doc], version: str = K8S_VERSIONS[-1]) -> list[str]:
    problems = []
    for doc in docs:
        if doc.get("kind") == "ScaledObject":
            for error in sorted(_scaledobject_validator().iter_errors(doc), key=lambda e: list(e.absolute_path)):
                path = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"ScaledObject/{doc['metadata']['name']} (KEDA schema) at {path}: {error.message}")
        else:
            problem = _core_schema_problem(json.dumps(doc, sort_keys=True), version)
            if problem:
                problems.append(problem)
    return problems


def config_problems(docs: list[Doc]) -> list[str]:
    problems = []
    data = config(docs)
    if not data:
        return [f"no ConfigMap {CONFIGMAP} with data"]
    known: dict[str, tuple[type[BaseSettings], str]] = {}
    for cls in SETTINGS_CLASSES:
        known.update({name: (cls, field) for name, field in env_names(cls).items()})
    for name, value in data.items():
        if _SECRET_WORDS.search(name):
            problems.append(f"ConfigMap {CONFIGMAP} holds the secret setting {name}: put it in the {SECRET} Secret")
        if name not in known and name not in LOGGING_VARIABLES:
            problems.append(f"ConfigMap {CONFIGMAP} sets {name}, which no segpipe setting reads (a typo?)")
        if not isinstance(value, str):
            problems.append(f"ConfigMap {CONFIGMAP}: {name} must be a string, got {value!r}")
        if name in PER_POD_VARIABLES:
            problems.append(
                f"ConfigMap {CONFIGMAP} sets {name}: every pod would share it (it defaults to the pod name)"
            )
    with environment_only({k: str(v) for k, v in data.items()}):
        for cls in SETTINGS_CLASSES:
            try:
                cls()
            except ValidationError as exc:
                details = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
                )
                problems.append(f"ConfigMap {CONFIGMAP}: invalid {cls.__name__}: {details}")
                return problems
        configured = {cls: cls() for cls in SETTINGS_CLASSES}
    with environment_only({}):
        defaults = {cls: cls() for cls in SETTINGS_CLASSES}
    for name in set(data) - KUBERNETES_OVERRIDES - set(LOGGING_VARIABLES):
        if name in known:
            cls, field = known[name]
            if getattr(configured[cls], field) != getattr(defaults[cls], field):
                problems.append(
                    f"ConfigMap {CONFIGMAP}: {name}={data[name]} differs from the code's default "
                    f"{getattr(defaults[cls], field)!r} (change the default, or list it in KUBERNETES_OVERRIDES)"
                )
    worker = configured[WorkerSettings]
    if worker.batch_size and worker.max_workers < 2 * worker.batch_size:
        problems.append(f"MAX_WORKERS={worker.max_workers} < 2 x BATCH_SIZE: decoding cannot overlap inference")
    if configured[ModelSettings].device in ("cpu", "auto"):
        problems.append("DEVICE must be cuda for GPU workers: auto would quietly segment on the CPU")
    return problems


def secret_problems(docs: list[Doc]) -> list[str]:
    problems = []
    for doc in docs:
        if doc.get("kind") == "Secret":
            problems.append(f"Secret/{doc['metadata']['name']} is in the manifests: secrets never go in git")
        if doc.get("kind") in ("Deployment", "Job"):
            for cont in pod_spec(doc)["containers"]:
                for name, value in env_values(cont).items():
                    if _SECRET_WORDS.search(name) and value:
                        problems.append(f"{doc['metadata']['name']}: {name} is a literal secret; use secretKeyRef")
                for ref in cont.get("envFrom") or []:
                    secret = ref.get("secretRef")
                    if secret and (secret.get("name") != SECRET or secret.get("optional") is not True):
                        problems.append(f"{doc['metadata']['name']}: secretRef must be optional {SECRET}: {secret}")
    return problems


def _deployment_basics(docs: list[Doc], name: str, command: list[str]) -> tuple[Doc | None, list[str]]:
    deployment = find(docs, "Deployment", name)
    if deployment is None:
        return None, [f"no Deployment {name}"]
    problems = []
    labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
    if not selects(deployment["spec"]["selector"].get("matchLabels") or {}, labels):
        problems.append(f"Deployment {name}: selector does not match its pod template's labels")
    cont = container(deployment)
    if cont.get("command") != command:
        problems.append(f"Deployment {name}: command {cont.get('command')} is not {command}")
    refs = [r["configMapRef"]["name"] for r in cont.get("envFrom") or [] if "configMapRef" in r]
    if CONFIGMAP not in refs or find(docs, "ConfigMap", CONFIGMAP) is None:
        problems.append(f"Deployment {name}: does not take its settings from ConfigMap {CONFIGMAP}")
    # Any registry (an overlay's `images:` sets it), but segpipe's own image at the release these manifests ship with.
    image = str(cont.get("image", ""))
    repository, _, tag = image.rpartition(":")
    if repository.rpartition("/")[2] != "segpipe" or tag != project_version():
        problems.append(f"Deployment {name}: image {image} is not segpipe:{project_version()} (pyproject's version)")
    context = pod_spec(deployment).get("securityContext") or {}
    if (context.get("runAsUser"), context.get("runAsGroup")) != dockerfile_user():
        problems.append(f"Deployment {name}: runAsUser/runAsGroup differ from the Dockerfile's USER")
    return deployment, problems


def worker_problems(docs: list[Doc]) -> list[str]:
    deployment, problems = _deployment_basics(docs, WORKER, WORKER_COMMAND)
    if deployment is None:
        return problems
    spec, cont = pod_spec(deployment), container(deployment)
    if "replicas" in deployment["spec"]:
        problems.append(f"Deployment {WORKER}: replicas is set, so every apply would undo KEDA's count")

    resources = cont.get("resources") or {}
    gpus = (resources.get("limits") or {}).get("nvidia.com/gpu")
    if gpus is None or int(gpus) != 1:
        problems.append(f"Deployment {WORKER}: limits must hold nvidia.com/gpu: 1, got {gpus!r}")
    requested = (resources.get("requests") or {}).get("nvidia.com/gpu")
    if requested is not None and requested != gpus:
        problems.append(f"Deployment {WORKER}: nvidia.com/gpu request {requested} differs from its limit {gpus}")
    memory = (resources.get("limits") or {}).get("memory")
    held_mb = effective(docs, WorkerSettings, "max_in_flight_mb")
    # What a worker holds besides its models: MAX_IN_FLIGHT_MB of requests, passed by at most one poll taken from
    # librdkafka's pre-fetch queue, which holds as much again (queued.max.messages.kbytes).
    held = held_mb * 2**20 + 2 * LIBRDKAFKA_QUEUE_BYTES
    if memory is None or quantity(memory) <= held:
        problems.append(
            f"Deployment {WORKER}: memory limit {memory} cannot hold MAX_IN_FLIGHT_MB={held_mb} of requests "
            "and librdkafka's pre-fetch queue: a backlog of large images would get the pod OOM-killed"
        )

    shutdown = effective(docs, WorkerSettings, "shutdown_timeout_s")
    needed = shutdown + EXIT_MARGIN_S
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= needed:
        problems.append(
            f"Deployment {WORKER}: terminationGracePeriodSeconds {grace} is not above SHUTDOWN_TIMEOUT_S "
            f"({shutdown} s) + the {EXIT_MARGIN_S} s the worker may take past it to exit: the kubelet would kill "
            "workers mid-drain"
        )

    metrics_port = effective(docs, WorkerSettings, "metrics_port")
    expected = {"startupProbe": LIVE_PATH, "livenessProbe": LIVE_PATH, "readinessProbe": READY_PATH}
    for kind, path in expected.items():
        probe = cont.get(kind)
        if not probe or "httpGet" not in probe:
            problems.append(f"Deployment {WORKER}: no HTTP {kind} (expected GET {path} on METRICS_PORT)")
            continue
        if probe["httpGet"].get("path") != path:
            problems.append(
                f"Deployment {WORKER}: {kind} asks {probe['httpGet'].get('path')}, the worker serves {path}"
            )
        port = container_port(cont, probe["httpGet"].get("port"))
        if port != metrics_port:
            problems.append(f"Deployment {WORKER}: {kind} port reaches {port}, the worker listens on {metrics_port}")
    startup = cont.get("startupProbe") or {}
    period, failures = startup.get("periodSeconds", 10), startup.get("failureThreshold", 3)
    budget = startup.get("initialDelaySeconds", 0) + period * failures
    compose_start = float(str(compose()["services"]["worker"]["healthcheck"]["start_period"]).rstrip("s"))
    if budget < compose_start:
        problems.append(
            f"Deployment {WORKER}: the startupProbe allows {budget} s to load the models, less than docker-compose's "
            f"start_period ({compose_start} s): liveness would restart workers that are still loading"
        )

    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mounts = {m["mountPath"]: m for m in cont.get("volumeMounts") or []}
    for variable, field in (("FASTSAM_MODEL_PATH", "fastsam_model_path"), ("SAM_MODEL_PATH", "sam_model_path")):
        path = Path(effective(docs, ModelSettings, field))
        mount = mounts.get(str(path.parent))
        if mount is None:
            problems.append(f"Deployment {WORKER}: {variable}={path} is not on a mounted volume")
            continue
        if not mount.get("readOnly"):
            problems.append(f"Deployment {WORKER}: the models mount {mount['mountPath']} must be read-only")
        claim = (volumes.get(mount["name"]) or {}).get("persistentVolumeClaim", {}).get("claimName")
        if claim is None or find(docs, "PersistentVolumeClaim", claim) is None:
            problems.append(f"Deployment {WORKER}: the models volume is not a PersistentVolumeClaim in the manifests")
        if path.name != Path(field_default(ModelSettings, field)).name:
            problems.append(f"Deployment {WORKER}: {variable} file name differs from the default {path.name}")
    return problems


def pdb_problems(docs: list[Doc]) -> list[str]:
    worker = find(docs, "Deployment", WORKER)
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    if worker is None or not pdbs:
        return ["no PodDisruptionBudget for the workers"]
    labels = worker["spec"]["template"]["metadata"].get("labels") or {}
    mine = [p for p in pdbs if selects(p["spec"]["selector"].get("matchLabels") or {}, labels)]
    if not mine:
        return [f"no PodDisruptionBudget selects the {WORKER} pods"]
    problems = []
    for pdb in mine:
        selector = pdb["spec"]["selector"]["matchLabels"]
        others = [
            d["metadata"]["name"]
            for d in docs
            if d.get("kind") == "Deployment"
            and d is not worker
            and selects(selector, d["spec"]["template"]["metadata"].get("labels") or {})
        ]
        if others:
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']} also selects {others}")
        if "minAvailable" in pdb["spec"] or int(pdb["spec"].get("maxUnavailable", 0)) < 1:
            problems.append(
                f"PodDisruptionBudget {pdb['metadata']['name']}: use maxUnavailable >= 1; at KEDA's minimum of one "
                "worker a minAvailable would keep that worker from ever being drained"
            )
    return problems


def redis_problems(docs: list[Doc]) -> list[str]:
    deployment = find(docs, "Deployment", REDIS)
    if deployment is None:
        return [f"no Deployment {REDIS}"]
    problems = []
    cont = container(deployment)
    labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
    if not selects(deployment["spec"]["selector"].get("matchLabels") or {}, labels):
        problems.append(f"Deployment {REDIS}: selector does not match its pod template's labels")
    if cont.get("image") != compose()["services"]["redis"]["image"]:
        problems.append(f"Deployment {REDIS}: image {cont.get('image')} differs from docker-compose.yml's")
    host = effective(docs, RedisSettings, "host")
    port = effective(docs, RedisSettings, "port")
    service = find(docs, "Service", host)
    if service is None:
        problems.append(f"REDIS_HOST={host} is not a Service in the manifests")
    else:
        if not selects(service["spec"].get("selector") or {}, labels):
            problems.append(f"Service {host} does not select the {REDIS} pods")
        entries = [p for p in service["spec"]["ports"] if p["port"] == port]
        if not entries:
            problems.append(f"Service {host} has no port {port} (REDIS_PORT)")
        elif container_port(cont, entries[0].get("targetPort", port)) is None:
            problems.append(
                f"Service {host}: targetPort {entries[0].get('targetPort')} is no port of the Redis container"
            )
    maxmemory = env_values(cont).get("REDIS_MAXMEMORY")
    script = " ".join(cont.get("args") or [])
    if maxmemory is None or "--maxmemory-policy volatile-lru" not in script:
        problems.append(
            f"Deployment {REDIS}: needs REDIS_MAXMEMORY and --maxmemory-policy volatile-lru (keys have TTLs)"
        )
    else:
        limit = (cont.get("resources") or {}).get("limits", {}).get("memory")
        if limit is None or quantity(limit) <= redis_bytes(maxmemory):
            problems.append(f"Deployment {REDIS}: memory limit {limit} must exceed maxmemory {maxmemory}")
    if "$(" in script:
        problems.append(f"Deployment {REDIS}: `$(` in the script would be substituted by Kubernetes, not the shell")
    return problems


def topics_problems(docs: list[Doc]) -> list[str]:
    job = find(docs, "Job", TOPICS_JOB)
    if job is None:
        return [f"no Job {TOPICS_JOB} creating the topics"]
    problems = []
    cont = container(job)
    if cont.get("image") != compose()["services"]["kafka"]["image"]:
        problems.append(f"Job {TOPICS_JOB}: image {cont.get('image')} differs from docker-compose.yml's kafka image")
    if pod_spec(job).get("restartPolicy") not in ("OnFailure", "Never"):
        problems.append(f"Job {TOPICS_JOB}: a Job needs restartPolicy OnFailure or Never")
    script = "\n".join(cont.get("args") or [])
    if "kafka-topics.sh" not in script or "--create" not in script or "--if-not-exists" not in script:
        problems.append(f"Job {TOPICS_JOB}: the script must create topics with kafka-topics.sh --if-not-exists")
    if "$(" in script:
        problems.append(f"Job {TOPICS_JOB}: `$(` in the script would be substituted by Kubernetes, not the shell")
    env = env_values(cont)
    from_config = set(config(docs)) if any("configMapRef" in r for r in cont.get("envFrom") or []) else set()
    assigned = set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=", script, re.MULTILINE))
    assigned |= set(re.findall(r"\bfor\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\b", script))
    undefined = set(_SHELL_VARIABLE.findall(script)) - assigned - set(env) - from_config
    if undefined:
        problems.append(f"Job {TOPICS_JOB}: the script uses variables it never gets: {sorted(undefined)}")
    for variable in ("KAFKA_INPUT_TOPIC", "KAFKA_OUTPUT_TOPIC", "KAFKA_DEAD_LETTER_TOPIC", "KAFKA_BOOTSTRAP_SERVERS"):
        if f"${variable}" not in script and f"${{{variable}}}" not in script:
            problems.append(f"Job {TOPICS_JOB}: the script does not use {variable} (the workers' own setting)")
    if not env.get("PARTITIONS", "").isdigit() or int(env["PARTITIONS"]) < 1:
        problems.append(f"Job {TOPICS_JOB}: PARTITIONS must be a positive number, got {env.get('PARTITIONS')!r}")
    if int(env.get("MAX_MESSAGE_BYTES", "0")) < effective(docs, KafkaSettings, "message_max_bytes"):
        problems.append(f"Job {TOPICS_JOB}: topics' max.message.bytes is below the clients' KAFKA_MESSAGE_MAX_BYTES")
    return problems


def partitions(docs: list[Doc]) -> int | None:
    job = find(docs, "Job", TOPICS_JOB)
    value = env_values(container(job)).get("PARTITIONS", "") if job else ""
    return int(value) if value.isdigit() else None


def scaledobject_problems(docs: list[Doc]) -> list[str]:
    scaled = [d for d in docs if d.get("kind") == "ScaledObject"]
    if len(scaled) != 1:
        return [f"expected one KEDA ScaledObject, found {len(scaled)}"]
    so = scaled[0]
    spec = so.get("spec") or {}
    problems = []
    target = spec.get("scaleTargetRef") or {}
    if (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment"), target.get("name")) != (
        "apps/v1",
        "Deployment",
        WORKER,
    ) or find(docs, "Deployment", WORKER) is None:
        problems.append(f"ScaledObject: scaleTargetRef {target} is not the worker Deployment {WORKER}")
    if any(d.get("kind") == "HorizontalPodAutoscaler" for d in docs):
        problems.append("a HorizontalPodAutoscaler beside the ScaledObject: KEDA creates and owns the worker's HPA")
    count = partitions(docs)
    maximum, minimum = spec.get("maxReplicaCount", 100), spec.get("minReplicaCount", 0)
    if count is None or maximum != count:
        problems.append(
            f"ScaledObject: maxReplicaCount {maximum} must equal the input topic's partitions ({count}, {TOPICS_JOB}): "
            "workers beyond the partition count sit idle"
        )
    if not isinstance(minimum, int) or minimum < 1 or minimum > maximum:
        problems.append(f"ScaledObject: minReplicaCount {minimum} must be 1..maxReplicaCount (models load slowly)")
    triggers = [t for t in spec.get("triggers") or [] if t.get("type") == "kafka"]
    if len(triggers) != 1:
        return [*problems, f"ScaledObject: expected one kafka trigger, found {len(triggers)}"]
    metadata = triggers[0].get("metadata") or {}
    expected = {
        "bootstrapServers": ("KAFKA_BOOTSTRAP_SERVERS", effective(docs, KafkaSettings, "bootstrap_servers")),
        "consumerGroup": ("KAFKA_GROUP_ID", effective(docs, KafkaSettings, "group_id")),
        "topic": ("KAFKA_INPUT_TOPIC", effective(docs, KafkaSettings, "input_topic")),
        "offsetResetPolicy": ("KAFKA_AUTO_OFFSET_RESET", effective(docs, KafkaSettings, "auto_offset_reset")),
    }
    for key, (variable, value) in expected.items():
        if metadata.get(key) != value:
            problems.append(
                f"ScaledObject: kafka trigger {key}={metadata.get(key)!r}, the workers use {variable}={value!r}"
            )
    # KEDA defaults lagThreshold to 10, a number unrelated to segpipe's workload: it must be chosen, not inherited.
    if "lagThreshold" not in metadata:
        problems.append("ScaledObject: the kafka trigger has no lagThreshold (KEDA's default 10 was not chosen)")
    if str(metadata.get("allowIdleConsumers", "false")).lower() == "true":
        problems.append("ScaledObject: allowIdleConsumers lets KEDA start workers that get no partition")
    return problems


def gateway_problems(docs: list[Doc]) -> list[str]:
    deployment, problems = _deployment_basics(docs, GATEWAY, GATEWAY_COMMAND)
    if deployment is None:
        return problems
    cont = container(deployment)
    port = effective(docs, GatewaySettings, "port")
    routes = gateway_routes()
    readiness = (cont.get("readinessProbe") or {}).get("httpGet") or {}
    if readiness.get("path") not in routes or container_port(cont, readiness.get("port")) != port:
        problems.append(f"Deployment {GATEWAY}: readinessProbe {readiness} is not GET /health on PORT {port}")
    service = find(docs, "Service", GATEWAY)
    labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
    if service is None or not selects(service["spec"].get("selector") or {}, labels):
        problems.append(f"Service {GATEWAY} missing or not selecting the gateway pods")
    elif not any(container_port(cont, p.get("targetPort", p["port"])) == port for p in service["spec"]["ports"]):
        problems.append(f"Service {GATEWAY}: no port reaches the gateway's PORT {port}")
    shutdown = effective(docs, GatewaySettings, "shutdown_timeout_s")
    if pod_spec(deployment).get("terminationGracePeriodSeconds", 30) <= shutdown:
        problems.append(f"Deployment {GATEWAY}: terminationGracePeriodSeconds is not above GATEWAY_SHUTDOWN_TIMEOUT_S")
    return problems


CHECKS: tuple[Callable[[list[Doc]], list[str]], ...] = (
    schema_problems,
    config_problems,
    secret_problems,
    worker_problems,
    pdb_problems,
    redis_problems,
    topics_problems,
    scaledobject_problems,
    gateway_problems,
)


def all_problems(docs: list[Doc]) -> list[str]:
    return list(dict.fromkeys(problem for check in CHECKS for problem in check(docs)))


# --- the manifests as they are ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_pass_kubernetes_schemas(manifests: list[Doc], version: str) -> None:
    core = [d for d in manifests if d["kind"] != "ScaledObject"]
    assert {d["kind"] for d in core} >= {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "Job"}
    assert schema_problems(core, version) == []


def test_scaledobject_passes_the_keda_schema(manifests: list[Doc]) -> None:
    scaled = [d for d in manifests if d["kind"] == "ScaledObject"]
    assert len(scaled) == 1
    assert schema_problems(scaled) == []


@pytest.mark.parametrize(
    "check",
    [c for c in CHECKS if c is not schema_problems],
    ids=lambda c: c.__name__.removesuffix("_problems"),
)
def test_manifests_agree_with_segpipe(manifests: list[Doc], check: Callable[[list[Doc]], list[str]]) -> None:
    assert check(manifests) == []


def test_base_alone_is_complete_without_the_gateway() -> None:
    base = build(gateway=False)
    assert find(base, "Deployment", GATEWAY) is None, "the gateway must stay opt-in"
    assert [p for c in CHECKS if c is not gateway_problems for p in c(base)] == []


def test_every_manifest_file_is_listed() -> None:
    listed: set[Path] = set()
    for root, kind in ((K8S, "Kustomization"), (GATEWAY_COMPONENT, "Component")):
        kustomization = yaml.safe_load((root / "kustomization.yaml").read_text(encoding="utf-8"))
        assert kustomization["kind"] == kind, f"{root}: a {kind} is expected"
        listed |= {(root / entry).resolve() for entry in kustomization.get("resources", [])}
    files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files - listed == set(), "manifests no kustomization lists would never be applied"


def test_partitions_and_keda_agree_with_docker_compose(manifests: list[Doc]) -> None:
    """One partition count for both deployments, so the README's worker rule reads the same for each."""
    init = compose()["services"]["kafka-init"]["environment"]["PARTITIONS"]
    match = re.fullmatch(r"\$\{SEGPIPE_PARTITIONS:-(\d+)\}", str(init))
    assert match, init
    assert partitions(manifests) == int(match[1])


def test_probe_paths_are_the_workers_health_routes() -> None:
    """The worker's own MetricsServer answers the probe paths: live follows the poll loop, ready the start-up."""
    # The server reads a StateSource's snapshot: the real handler is asked, no model or broker is needed.
    stall_after_s = KafkaSettings().max_poll_interval_ms / 2000
    state = WorkerState(
        worker_id="stub",
        running=False,
        started=False,
        stopping=False,
        since_last_poll_s=0.0,
        stall_after_s=stall_after_s,
        assigned_partitions=0,
        paused=False,
        in_flight=0,
        held_bytes=0,
        backlog=0,
        consumed=0,
        published=0,
        answered_again=0,
        redis_healthy=None,
    )
    worker = SimpleNamespace(snapshot=lambda: state)
    server = MetricsServer(worker, WorkerMetrics(), host="127.0.0.1", port=0).start()  # type: ignore[arg-type]

    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        assert (status(LIVE_PATH), status(READY_PATH)) == (503, 503), "loading: neither live nor ready"
        state = replace(state, running=True)
        assert (status(LIVE_PATH), status(READY_PATH)) == (200, 503), "polling, models not yet started"
        state = replace(state, started=True)
        assert (status(LIVE_PATH), status(READY_PATH)) == (200, 200)
        state = replace(state, since_last_poll_s=2 * stall_after_s)
        assert status(LIVE_PATH) == 503, "a stuck poll loop must fail liveness"
        state = replace(state, since_last_poll_s=0.0, stopping=True)
        assert (status(LIVE_PATH), status(READY_PATH)) == (200, 503), "a stopping worker takes nothing new"
    finally:
        server.stop()


# --- kustomize itself -------------------------------------------------------------------------------------------


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        try:
            probe = subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if probe.returncode == 0:
            return ["kubectl", "kustomize"]
    return None


def _by_key(docs: list[Doc]) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize("gateway", [False, True], ids=["base", "with-gateway"])
def test_kustomize_builds_what_this_test_reads(gateway: bool, tmp_path: Path) -> None:
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl kustomize is installed")
    target = K8S
    if gateway:  # an overlay, as a user adds the component (kustomize refuses absolute paths)
        overlay = tmp_path / "overlay"
        overlay.mkdir()
        base = os.path.relpath(K8S, overlay)
        overlay.joinpath("kustomization.yaml").write_text(
            f"resources: [{base}]\ncomponents: [{os.path.relpath(GATEWAY_COMPONENT, overlay)}]\n", encoding="utf-8"
        )
        target = overlay
    result = subprocess.run([*command, str(target)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert _by_key(built) == _by_key(build(gateway=gateway))


def test_readme_overlay_builds_and_passes_every_check(tmp_path: Path) -> None:
    """The README's overlay example (registry, brokers, gateway) is a working overlay that keeps the rules."""
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl kustomize is installed")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```yaml\n(# overlays/prod/kustomization\.yaml.*?)```", readme, re.DOTALL)
    assert match, "README.md no longer shows the overlay example"
    overlay = tmp_path / "overlays" / "prod"
    overlay.mkdir(parents=True)
    text = match[1].replace("../../deploy/k8s", os.path.relpath(K8S, overlay))
    overlay.joinpath("kustomization.yaml").write_text(text, encoding="utf-8")
    result = subprocess.run([*command, str(overlay)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert config(built)["KAFKA_BOOTSTRAP_SERVERS"] != config(build())["KAFKA_BOOTSTRAP_SERVERS"], "patch unused"
    assert all_problems(built) == []


# --- deliberate breakages, each caught --------------------------------------------------------------------------


Keys = tuple[str | int, ...]
_POD: Keys = ("spec", "template", "spec")
_CONTAINER: Keys = (*_POD, "containers", 0)
_SO = ("ScaledObject", WORKER)
_TRIGGER: Keys = ("spec", "triggers", 0, "metadata")


def _at(docs: list[Doc], kind: str, name: str, keys: Keys) -> Any:
    node: Any = find(docs, kind, name)
    for key in keys:
        node = node[key]
    return node


def _set(ref: tuple[str, str], keys: Keys, value: Any) -> Callable[[list[Doc]], None]:
    """A mutation: the field at ``keys`` of ``ref`` (kind, name) set to ``value``; ``None`` deletes it."""

    def mutate(docs: list[Doc]) -> None:
        parent = _at(docs, *ref, keys[:-1])
        if value is None:
            del parent[keys[-1]]
        else:
            parent[keys[-1]] = value

    return mutate


def _edit(ref: tuple[str, str], keys: Keys, change: Callable[[Any], Any]) -> Callable[[list[Doc]], None]:
    """A mutation: ``change`` applied in place to the node at ``keys`` of ``ref``."""
    return lambda docs: change(_at(docs, *ref, keys)) and None


def _script(ref: tuple[str, str], old: str, new: str) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        cont = _at(docs, *ref, _CONTAINER)
        cont["args"] = [cont["args"][0].replace(old, new)]

    return mutate


_WORKER = ("Deployment", WORKER)
_PDB = ("PodDisruptionBudget", WORKER)
_CM = ("ConfigMap", CONFIGMAP)
_JOB = ("Job", TOPICS_JOB)
_COMPONENT = "app.kubernetes.io/component"
BREAKAGES: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "worker selector matches no pod": (
        _set(_WORKER, ("spec", "selector", "matchLabels", _COMPONENT), "workers"),
        "selector does not match",
    ),
    "PDB selects nothing": (_set(_PDB, ("spec", "selector", "matchLabels", _COMPONENT), "wrker"), "no PodDisruption"),
    "PDB selects the gateway too": (
        _set(_PDB, ("spec", "selector", "matchLabels"), {"app.kubernetes.io/name": "segpipe"}),
        "also selects",
    ),
    "PDB with minAvailable": (
        _edit(_PDB, ("spec",), lambda spec: spec.update(minAvailable=1) or spec.pop("maxUnavailable")),
        "use maxUnavailable",
    ),
    "no readiness probe": (_set(_WORKER, (*_CONTAINER, "readinessProbe"), None), "no HTTP readinessProbe"),
    "no startup probe": (_set(_WORKER, (*_CONTAINER, "startupProbe"), None), "no HTTP startupProbe"),
    "liveness on the wrong path": (
        _set(_WORKER, (*_CONTAINER, "livenessProbe", "httpGet", "path"), "/healthz"),
        "livenessProbe asks",
    ),
    "readiness on the live path": (
        _set(_WORKER, (*_CONTAINER, "readinessProbe", "httpGet", "path"), LIVE_PATH),
        "readinessProbe asks",
    ),
    "probe on the wrong port": (
        _set(_WORKER, (*_CONTAINER, "livenessProbe", "httpGet", "port"), 8080),
        "livenessProbe port",
    ),
    "startup budget too short": (
        _set(_WORKER, (*_CONTAINER, "startupProbe", "failureThreshold"), 3),
        "startupProbe allows",
    ),
    "grace period shorter than the drain": (
        _set(_WORKER, (*_POD, "terminationGracePeriodSeconds"), 30),
        "terminationGracePeriodSeconds 30",
    ),
    "grace period field typo": (
        _edit(_WORKER, _POD, lambda pod: pod.update(terminationGracePeriod=pod.pop("terminationGracePeriodSeconds"))),
        "'terminationGracePeriod' was unexpected",
    ),
    "no GPU": (_set(_WORKER, (*_CONTAINER, "resources", "limits", "nvidia.com/gpu"), None), "nvidia.com/gpu"),
    "two GPUs": (_set(_WORKER, (*_CONTAINER, "resources", "limits", "nvidia.com/gpu"), 2), "nvidia.com/gpu"),
    "memory below the in-flight buffer": (
        _set(_WORKER, (*_CONTAINER, "resources", "limits", "memory"), "320Mi"),
        "OOM-killed",
    ),
    "in-flight buffer above the memory limit": (
        _set(_CM, ("data", "MAX_IN_FLIGHT_MB"), "20000"),
        "MAX_IN_FLIGHT_MB=20000",
    ),
    "replicas fixed under KEDA": (_set(_WORKER, ("spec", "replicas"), 3), "replicas is set"),
    "writable models mount": (_set(_WORKER, (*_CONTAINER, "volumeMounts", 0, "readOnly"), False), "read-only"),
    "wrong worker command": (_set(_WORKER, (*_CONTAINER, "command"), ["python", "-m", "consumers"]), "command"),
    "image tag drifted": (_set(_WORKER, (*_CONTAINER, "image"), "segpipe:latest"), "pyproject's version"),
    "ScaledObject without lagThreshold": (_set(_SO, (*_TRIGGER, "lagThreshold"), None), "no lagThreshold"),
    "ScaledObject trigger field typo": (
        _edit(_SO, _TRIGGER, lambda meta: meta.update(lagTreshold=meta.pop("lagThreshold"))),
        "'lagTreshold' was unexpected",
    ),
    "ScaledObject spec field typo": (
        _edit(_SO, ("spec",), lambda spec: spec.update(maxReplicas=spec.pop("maxReplicaCount"))),
        "'maxReplicas' was unexpected",
    ),
    "lagThreshold not a string": (_set(_SO, (*_TRIGGER, "lagThreshold"), 64), "is not of type 'string'"),
    "maxReplicaCount above partitions": (_set(_SO, ("spec", "maxReplicaCount"), 12), "sit idle"),
    "maxReplicaCount below partitions": (_set(_SO, ("spec", "maxReplicaCount"), 3), "sit idle"),
    "scale to zero": (_set(_SO, ("spec", "minReplicaCount"), 0), "minReplicaCount"),
    "scale target is not the worker": (_set(_SO, ("spec", "scaleTargetRef", "name"), "segpipe-workers"), "scaleTarget"),
    "another consumer group": (_set(_SO, (*_TRIGGER, "consumerGroup"), "segpipe"), "consumerGroup"),
    "another topic": (_set(_SO, (*_TRIGGER, "topic"), "segpipe.results"), "topic="),
    "brokers differ from the workers'": (_set(_SO, (*_TRIGGER, "bootstrapServers"), "kafka:9093"), "bootstrapServers"),
    "idle consumers allowed": (_set(_SO, (*_TRIGGER, "allowIdleConsumers"), "true"), "allowIdleConsumers"),
    "partitions raised without KEDA": (
        _edit(
            _JOB, (*_CONTAINER, "env"), lambda env: next(e for e in env if e["name"] == "PARTITIONS").update(value="12")
        ),
        "maxReplicaCount 6 must equal",
    ),
    "literal secret in the ConfigMap": (_set(_CM, ("data", "REDIS_PASSWORD"), "hunter2"), "secret setting"),
    "literal secret in a pod's env": (
        _edit(_WORKER, _CONTAINER, lambda c: c.setdefault("env", []).append({"name": "REDIS_PASSWORD", "value": "x"})),
        "literal secret",
    ),
    "a Secret manifest": (
        lambda docs: docs.append(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "stringData": {"REDIS_PASSWORD": "x"}}
        ),
        "never go in git",
    ),
    "required Secret": (_set(_WORKER, (*_CONTAINER, "envFrom", 1, "secretRef", "optional"), False), "must be optional"),
    "ConfigMap key typo": (_set(_CM, ("data", "REDIS_HOTS"), "segpipe-redis"), "no segpipe setting reads"),
    "one worker id for every pod": (_set(_CM, ("data", "WORKER_ID"), "worker"), "every pod would share it"),
    "ConfigMap value invalid": (_set(_CM, ("data", "DEFAULT_CONF"), "1.5"), "invalid ModelSettings"),
    "ConfigMap value drifted from the default": (_set(_CM, ("data", "MAX_CONTOURS"), "20"), "code's default"),
    "ConfigMap number not a string": (_set(_CM, ("data", "REDIS_PORT"), 6379), "must be a string"),
    "CPU workers": (_set(_CM, ("data", "DEVICE"), "auto"), "DEVICE must be cuda"),
    "Redis host is not the service": (_set(_CM, ("data", "REDIS_HOST"), "redis"), "REDIS_HOST=redis"),
    "Redis service selects nothing": (
        _set(("Service", REDIS), ("spec", "selector", _COMPONENT), "cache"),
        "does not select",
    ),
    "Redis service targets no port": (_set(("Service", REDIS), ("spec", "ports", 0, "targetPort"), "db"), "targetPort"),
    "Redis limit below maxmemory": (
        _set(("Deployment", REDIS), (*_CONTAINER, "resources", "limits", "memory"), "1Gi"),
        "must exceed maxmemory",
    ),
    "topics script with $(VAR)": (
        _script(_JOB, "$KAFKA_INPUT_TOPIC", "$(KAFKA_INPUT_TOPIC)"),
        "substituted by Kubernetes",
    ),
    "topics script variable never set": (_script(_JOB, "$PARTITIONS", "$PARTITION"), "never gets"),
    "gateway service on the wrong port": (
        _set(("Service", GATEWAY), ("spec", "ports", 0, "targetPort"), 8080),
        "no port reaches",
    ),
    "gateway readiness on a missing route": (
        _set(("Deployment", GATEWAY), (*_CONTAINER, "readinessProbe", "httpGet", "path"), "/ready"),
        "readinessProbe",
    ),
}


@pytest.mark.parametrize("name", list(BREAKAGES))
def test_breakage_is_caught(manifests: list[Doc], name: str) -> None:
    mutate, expected = BREAKAGES[name]
    docs = copy.deepcopy(manifests)
    mutate(docs)
    assert docs != manifests, "the mutation changed nothing"
    problems = all_problems(docs)
    assert any(expected in problem for problem in problems), f"{name!r} not reported; problems: {problems}"
