"""docker-compose.yml checked against segpipe's own settings.

Mistakes in a compose file surface only once containers run (a listener a client cannot reach, a topic nobody
creates, a variable the settings never read, workers that cannot scale), so these tests read the file with
PyYAML and hold it to the code. ``docker compose config`` validates the schema where Docker is installed.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from gateway.app import GatewaySettings
from pipeline.settings import ModelSettings
from segpipe.config import AppSettings, KafkaSettings, RedisSettings, WorkerSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
KAFKA_SERVICE = "kafka"
SEGPIPE_SERVICES = ("worker", "gateway")
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    KafkaSettings,
    RedisSettings,
    WorkerSettings,
    ModelSettings,
    GatewaySettings,
)
# Read straight from the environment by segpipe.logs.configure_logging rather than by a settings class.
LOGGING_VARIABLES = ("LOG_LEVEL", "LOG_FORMAT")
KAFKA_TOPICS_SH = "/opt/kafka/bin/kafka-topics.sh"

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def interpolate(value: object) -> str:
    """A value as Compose sees it with no variable set: ``${X:-d}`` and ``${X-d}`` give d, ``$$`` gives ``$``."""
    text = "" if value is None else str(value)
    marker = "\x00"
    text = text.replace("$$", marker)

    def substitute(match: re.Match[str]) -> str:
        op = match["op"] or ""
        if op.endswith("?"):
            raise AssertionError(f"${{{match['name']}}} is required and has no default: {value!r}")
        return match["arg"] if op.endswith("-") else ""

    return _VARIABLE.sub(substitute, text).replace(marker, "$")


def field_default(settings_class: type[BaseSettings], field: str) -> Any:
    """The declared default, unaffected by whatever the test process has in its environment."""
    return settings_class.model_fields[field].get_default(call_default_factory=True)


def env_names(settings_class: type[BaseSettings]) -> set[str]:
    prefix = settings_class.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in settings_class.model_fields}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)} (an empty host means every interface)."""
    parsed: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, address = item.partition("://")
        host, _, port = address.rpartition(":")
        assert sep and port.isdigit(), f"not NAME://host:port: {item!r}"
        parsed[name] = (host, int(port))
    return parsed


def protocol_map(value: str) -> dict[str, str]:
    return dict(item.strip().split(":", 1) for item in value.split(",") if item.strip())


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def seconds(duration: str) -> float:
    """Compose durations such as ``45s``, ``1m30s`` or ``500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    return services[name]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    return {str(name): interpolate(value) for name, value in raw.items()}


@pytest.fixture(scope="module")
def kafka_env(compose: dict[str, Any]) -> dict[str, str]:
    return environment(service(compose, KAFKA_SERVICE))


def published_ports(svc: dict[str, Any]) -> list[tuple[str | None, int | None, int]]:
    """(host_ip, published, target) for each entry of ``ports``, short or long syntax."""
    out: list[tuple[str | None, int | None, int]] = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            out.append((entry.get("host_ip"), int(interpolate(published)) if published else None, int(entry["target"])))
            continue
        parts = interpolate(entry).split("/")[0].rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append((None, int(parts[0]), int(parts[1])))
        else:
            out.append((None, None, int(parts[0])))
    return out


# --- images -----------------------------------------------------------------------------------------------------


def test_images_are_apache_kafka_and_redis_never_bitnami(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert "bitnami" not in str(svc.get("image", "")), f"{name}: Bitnami images are frozen; use apache/kafka"
    kafka_image = service(compose, KAFKA_SERVICE)["image"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka_image), kafka_image
    assert service(compose, "kafka-init")["image"] == kafka_image, "kafka-init must run the broker's own tools"
    assert re.fullmatch(r"redis:7(\.\d+)*-alpine", service(compose, "redis")["image"])


# --- Kafka (KRaft) ----------------------------------------------------------------------------------------------


def test_kraft_single_node_settings_are_consistent(compose: dict[str, Any], kafka_env: dict[str, str]) -> None:
    env = kafka_env
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = int(env["KAFKA_NODE_ID"])

    own = listeners(env["KAFKA_LISTENERS"])
    controller_names = env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
    assert all(name in own for name in controller_names), "every controller listener must be a listener"

    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1, "one node: one voter"
    voter_id, _, voter_address = voters[0].partition("@")
    assert int(voter_id) == node_id, "the only voter must be this node"
    voter_host, voter_port = host_port(voter_address)
    assert voter_host in (KAFKA_SERVICE, service(compose, KAFKA_SERVICE).get("hostname")), voter_host
    assert voter_port in {own[name][1] for name in controller_names}, "the voter address must be a controller port"

    inter_broker = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert inter_broker in own and inter_broker not in controller_names

    security = protocol_map(env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    for name in [*own, *advertised]:
        assert name in security, f"listener {name} has no entry in KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"
    assert set(advertised) <= set(own), "an advertised listener must also be a listener"

    # Every internal topic needs as many brokers as its replication factor, or consumer groups never form.
    for name in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[name] == "1", f"{name} must be 1 on a single node"

    # The storage is formatted with CLUSTER_ID: it must be a Kafka Uuid (16 bytes, base64url without padding).
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16


def test_advertised_listeners_are_reachable_where_they_are_used(
    compose: dict[str, Any], kafka_env: dict[str, str]
) -> None:
    kafka = service(compose, KAFKA_SERVICE)
    own = listeners(kafka_env["KAFKA_LISTENERS"])
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    assert any(host == KAFKA_SERVICE for host, _ in advertised.values()), "containers need a listener at `kafka`"
    ports = published_ports(kafka)
    for name, (host, port) in advertised.items():
        if host == KAFKA_SERVICE:
            assert port == own[name][1], f"{name} is advertised on {port} but listens on {own[name][1]}"
        else:  # for clients on the Docker host: advertised as the published host port of the listener's port
            assert (port, own[name][1]) in {(published, target) for _, published, target in ports}, (
                f"{name} advertises {host}:{port}, which is not published to container port {own[name][1]}"
            )


def test_worker_bootstrap_is_a_listener_kafka_advertises(compose: dict[str, Any], kafka_env: dict[str, str]) -> None:
    advertised = listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    security = protocol_map(kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"])
    for name in SEGPIPE_SERVICES:
        env = environment(service(compose, name))
        servers = [host_port(s.strip()) for s in env["KAFKA_BOOTSTRAP_SERVERS"].split(",")]
        client_protocol = env.get("KAFKA_SECURITY_PROTOCOL", field_default(KafkaSettings, "security_protocol"))
        for server in servers:
            matches = [listener for listener, address in advertised.items() if address == server]
            assert matches, f"{name}: {server} is not an advertised listener {advertised}"
            assert security[matches[0]] == client_protocol, f"{name}: {matches[0]} does not speak {client_protocol}"


def test_broker_accepts_messages_as_large_as_clients_send(compose: dict[str, Any], kafka_env: dict[str, str]) -> None:
    client_max = field_default(KafkaSettings, "message_max_bytes")
    assert int(kafka_env["KAFKA_MESSAGE_MAX_BYTES"]) >= client_max
    assert int(kafka_env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= client_max
    assert int(environment(service(compose, "kafka-init"))["MAX_MESSAGE_BYTES"]) >= client_max


def test_kafka_has_a_healthcheck_and_persistent_log_dirs(compose: dict[str, Any], kafka_env: dict[str, str]) -> None:
    kafka = service(compose, KAFKA_SERVICE)
    test = kafka["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL") and "/opt/kafka/bin/" in " ".join(test[1:])
    mounted = {}
    for volume in kafka.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounted[target] = source
    log_dir = kafka_env["KAFKA_LOG_DIRS"]
    assert log_dir in mounted, f"KAFKA_LOG_DIRS {log_dir} is not on a volume: topics vanish with the container"
    assert mounted[log_dir] in (compose.get("volumes") or {}), "the log volume should be a named volume"


# --- topics -----------------------------------------------------------------------------------------------------


def test_kafka_init_creates_the_topics_segpipe_uses(compose: dict[str, Any]) -> None:
    init = service(compose, "kafka-init")
    env = environment(init)
    expected = {
        "INPUT_TOPIC": field_default(KafkaSettings, "input_topic"),
        "OUTPUT_TOPIC": field_default(KafkaSettings, "output_topic"),
        "DEAD_LETTER_TOPIC": field_default(KafkaSettings, "dead_letter_topic"),
    }
    for variable, topic in expected.items():
        assert env[variable] == topic, f"kafka-init creates {env[variable]!r}, segpipe uses {topic!r}"
    for name in SEGPIPE_SERVICES:
        svc_env = environment(service(compose, name))
        for variable, topic in expected.items():
            assert svc_env.get(f"KAFKA_{variable}", topic) == topic, f"{name}: KAFKA_{variable} differs from kafka-init"

    assert init["depends_on"][KAFKA_SERVICE]["condition"] == "service_healthy"
    assert str(init.get("restart")) == "no", "a one-shot job must not be restarted"
    assert env["PARTITIONS"].isdigit() and int(env["PARTITIONS"]) >= 1
    assert "SEGPIPE_PARTITIONS" in str(init["environment"]["PARTITIONS"])


def test_kafka_init_script_is_well_formed(compose: dict[str, Any]) -> None:
    init = service(compose, "kafka-init")
    command = init["command"]
    script = command if isinstance(command, str) else "\n".join(command)
    assert KAFKA_TOPICS_SH in script and "--create" in script and "--if-not-exists" in script
    # A single `$NAME` would be filled in by Compose from the host environment (usually with nothing): the script's
    # own variables must be written `$$NAME`.
    assert "$" not in script.replace("$$", ""), "use $$VAR in kafka-init's script, not $VAR"
    referenced = set(re.findall(r"\$\$\{?([A-Za-z_][A-Za-z0-9_]*)", script))
    assigned = set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=", script, re.MULTILINE))
    assigned |= set(re.findall(r"\bfor\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\b", script))
    undefined = referenced - assigned - set(init["environment"])
    assert not undefined, f"kafka-init's script uses variables it never gets: {sorted(undefined)}"


# --- worker and gateway -----------------------------------------------------------------------------------------


def test_every_variable_segpipe_services_set_is_read_by_segpipe(compose: dict[str, Any]) -> None:
    known = set().union(*(env_names(cls) for cls in SETTINGS_CLASSES))
    logs_source = (REPO / "segpipe" / "logs.py").read_text(encoding="utf-8")
    for variable in LOGGING_VARIABLES:
        assert f'"{variable}"' in logs_source, f"segpipe.logs no longer reads {variable}"
    for name in SEGPIPE_SERVICES:
        unknown = set(environment(service(compose, name))) - known - set(LOGGING_VARIABLES)
        assert not unknown, f"{name} sets variables no segpipe setting reads (a typo?): {sorted(unknown)}"


@pytest.mark.parametrize("name", SEGPIPE_SERVICES)
def test_service_environment_is_valid_configuration(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(service(compose, name))
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    settings = AppSettings()  # raises ConfigurationError naming the variable on a bad value
    assert settings.kafka.bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
    assert settings.redis.host == env["REDIS_HOST"] == "redis"
    assert settings.redis.port == 6379


def test_worker_reserves_one_nvidia_gpu(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker")
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert len(gpus) == 1 and gpus[0].get("count") == 1, devices
    assert environment(worker).get("DEVICE", "auto") != "cpu"


def test_worker_can_be_scaled(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker")
    assert "container_name" not in worker, "a fixed container_name makes --scale worker=N fail"
    assert not worker.get("ports"), "a published port makes --scale worker=N collide"
    # The default client.id and worker_id come from the hostname: replicas sharing one would be indistinguishable.
    assert "hostname" not in worker
    env = environment(worker)
    assert "KAFKA_CLIENT_ID" not in env and "WORKER_ID" not in env
    assert env.get("KAFKA_GROUP_ID", field_default(KafkaSettings, "group_id")), "replicas must share a group"


def test_worker_reads_models_from_the_read_only_mount(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker")
    mounts = [v for v in worker.get("volumes") or [] if isinstance(v, dict) and v.get("type") == "bind"]
    assert len(mounts) == 1, "one bind mount for the checkpoints (long syntax)"
    mount = mounts[0]
    assert mount.get("read_only") is True
    assert "SEGPIPE_MODELS_DIR" in str(mount["source"]) and interpolate(mount["source"]) == "./checkpoints"
    env = environment(worker)
    for variable, field in (("FASTSAM_MODEL_PATH", "fastsam_model_path"), ("SAM_MODEL_PATH", "sam_model_path")):
        path = Path(env[variable])
        assert path.parent == Path(mount["target"]), f"{variable}={path} is not in {mount['target']}"
        assert path.name == Path(field_default(ModelSettings, field)).name, f"{variable} default name drifted"


def test_worker_starts_after_its_dependencies_and_stops_gracefully(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker")
    depends = worker["depends_on"]
    assert depends["kafka-init"]["condition"] == "service_completed_successfully"
    assert depends["redis"]["condition"] == "service_healthy"
    assert service(compose, "redis")["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert worker["restart"] == "unless-stopped"
    assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "consumers.health"]
    assert worker["command"] == ["python", "-m", "consumers.worker"]
    env = environment(worker)
    shutdown = float(env.get("SHUTDOWN_TIMEOUT_S", field_default(WorkerSettings, "shutdown_timeout_s")))
    grace = seconds(str(worker.get("stop_grace_period", "10s")))
    assert grace > shutdown, f"stop_grace_period {grace}s leaves no time for SHUTDOWN_TIMEOUT_S={shutdown}s"


def test_gateway_is_opt_in(compose: dict[str, Any]) -> None:
    gateway = service(compose, "gateway")
    assert gateway.get("profiles") == ["gateway"], "without a profile `docker compose up` would start it"
    assert gateway["command"] == ["python", "-m", "gateway"]
    port = int(environment(gateway)["PORT"])
    assert port == 5000 and port in {target for _, _, target in published_ports(gateway)}
    for name, svc in compose["services"].items():
        if name != "gateway" and not svc.get("profiles"):
            assert "gateway" not in (svc.get("depends_on") or {}), f"{name} would drag the gateway profile in"


def test_interpolate_follows_compose_rules() -> None:
    assert interpolate("${A:-x}/${B-y}/${C}/$$D") == "x/y//$D"
    with pytest.raises(AssertionError):
        interpolate("${A:?must be set}")


# --- docker compose itself --------------------------------------------------------------------------------------


def _docker_compose_unavailable() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "docker CLI not installed"
    try:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker compose version` failed: {exc}"
    if probe.returncode != 0:
        output = (probe.stderr or probe.stdout).strip().splitlines()
        return f"docker compose plugin unavailable: {output[0] if output else f'exit {probe.returncode}'}"
    return None


@pytest.mark.parametrize("profiles", [(), ("gateway",)], ids=["default", "gateway"])
def test_docker_compose_accepts_the_file(profiles: tuple[str, ...]) -> None:
    reason = _docker_compose_unavailable()
    if reason:
        pytest.skip(reason)
    command = ["docker", "compose", "--file", str(COMPOSE_FILE)]
    for profile in profiles:
        command += ["--profile", profile]
    result = subprocess.run([*command, "config", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
