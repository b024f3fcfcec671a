"""The Kafka of docker-compose.yml, for real: an image-sized Avro request goes through segpipe's producer and consumer.

Runs only where a Docker daemon answers (the ``docker`` marker; see tests/conftest.py) and testcontainers is installed
(``pip install '.[docker]'``). The broker is the compose file's own ``kafka`` service: same image, same environment,
with only the host-facing listener re-advertised at the port Docker mapped.

Why not ``testcontainers.kafka.KafkaContainer``: in testcontainers-python (4.15 at the time of writing) it drives
Confluent's cp-kafka start scripts (``/etc/confluent/docker/...``), which the apache/kafka image does not have. Like
testcontainers-java's ``org.testcontainers.kafka.KafkaContainer``, this test starts the image's own
``/etc/kafka/docker/run`` once the advertised address is known.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import tarfile
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaException, Message
from confluent_kafka.admin import AdminClient

from schemas import SegmentRequest, decode_request, encode_request, is_avro_request, now_ms, request_headers
from segpipe.config import KafkaSettings
from segpipe.kafka import ensure_topics, make_consumer, make_producer

pytestmark = pytest.mark.docker

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
HOST_LISTENER = "EXTERNAL"  # the compose kafka's listener for clients outside the compose network
STARTER = PurePosixPath("/tmp/segpipe-start-kafka.sh")
STARTER_READY = PurePosixPath("/tmp/segpipe-start-kafka.ready")
STARTUP_TIMEOUT_S = 120.0
# Larger than the broker's default message.max.bytes (~1 MiB): the round trip proves the compose file raised it.
IMAGE_BYTES = 3 * 1024 * 1024

_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}")


def _interpolate(value: object) -> str:
    """Compose's interpolation with no variable set (``${X:-d}`` -> d, ``$$`` -> ``$``)."""
    text = str(value).replace("$$", "\x00")
    return _VARIABLE.sub(lambda m: m[1] or "", text).replace("\x00", "$")


def _compose_kafka() -> tuple[str, dict[str, str]]:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        kafka = yaml.safe_load(f)["services"]["kafka"]
    return kafka["image"], {name: _interpolate(value) for name, value in kafka["environment"].items()}


def _listener_port(listeners: str, name: str) -> int:
    for item in listeners.split(","):
        listener, _, address = item.strip().partition("://")
        if listener == name:
            return int(address.rpartition(":")[2])
    raise AssertionError(f"docker-compose.yml's kafka has no {name} listener in {listeners!r}")


def _readvertise(advertised: str, name: str, host: str, port: int) -> str:
    items = [item.strip() for item in advertised.split(",")]
    return ",".join(f"{name}://{host}:{port}" if item.startswith(f"{name}://") else item for item in items)


def _put_file(container: Any, path: PurePosixPath, text: str) -> None:
    data = text.encode("utf-8")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(path.name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    assert container.get_wrapped_container().put_archive(str(path.parent), archive.getvalue())


def _log_tail(container: Any, lines: int = 40) -> str:
    stdout, stderr = container.get_logs()
    text = (stdout or b"").decode("utf-8", "replace") + (stderr or b"").decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def _wait_for_broker(container: Any, bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error: object = None
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=2).brokers:
                return
        except KafkaException as exc:
            last_error = exc
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status not in ("created", "running"):
            last_error = f"container {wrapped.status}"
            break
        time.sleep(0.5)
    pytest.fail(f"Kafka at {bootstrap} not ready ({last_error}); container log:\n{_log_tail(container)}")


def _consume_one(settings: KafkaSettings, topic: str, timeout: float = 60.0) -> Message:
    consumer = make_consumer(settings, group_id=f"segpipe-deploy-test-{uuid.uuid4().hex[:8]}")
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            return message
    finally:
        consumer.close()
    pytest.fail(f"nothing consumed from {topic} within {timeout}s")


def test_avro_request_round_trips_through_the_compose_kafka() -> None:
    core = pytest.importorskip(
        "testcontainers.core.container", reason="testcontainers is not installed (pip install '.[docker]')"
    )
    image, env = _compose_kafka()
    host_port = _listener_port(env["KAFKA_LISTENERS"], HOST_LISTENER)

    # hostname=kafka: the compose service name, which the internal listener and the quorum voter use.
    container = core.DockerContainer(image, hostname="kafka")
    for name, value in env.items():
        container.with_env(name, value)
    container.with_exposed_ports(host_port)
    # Wait for the starter script: the address to advertise is known only once Docker has mapped the port.
    container.with_command(["sh", "-c", f"while [ ! -f {STARTER_READY} ]; do sleep 0.1; done; exec bash {STARTER}"])

    with container:
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(host_port))
        advertised = _readvertise(env["KAFKA_ADVERTISED_LISTENERS"], HOST_LISTENER, host, port)
        _put_file(
            container,
            STARTER,
            f"export KAFKA_ADVERTISED_LISTENERS={shlex.quote(advertised)}\nexec /etc/kafka/docker/run\n",
        )
        _put_file(container, STARTER_READY, "")  # after the script, so it never runs half-written
        bootstrap = f"{host}:{port}"
        _wait_for_broker(container, bootstrap)

        settings = KafkaSettings(bootstrap_servers=bootstrap, client_id="segpipe-deploy-test")
        # The compose broker does not auto-create topics (kafka-init does): create them the way segpipe does.
        ensure_topics(settings, {settings.input_topic: 3, settings.output_topic: 3, settings.dead_letter_topic: 1})

        request = SegmentRequest(
            request_id=f"deploy-{uuid.uuid4().hex}",
            image=os.urandom(IMAGE_BYTES),  # incompressible, so compression cannot shrink it under the default limit
            source="tests/deploy",
            submitted_at_ms=now_ms(),
        )
        delivered: list[tuple[object, Message]] = []
        producer = make_producer(settings)
        producer.produce(
            settings.input_topic,
            key=request.request_id.encode("utf-8"),
            value=encode_request(request),
            headers=request_headers(request),
            on_delivery=lambda err, msg: delivered.append((err, msg)),
        )
        assert producer.flush(30) == 0, "the producer did not deliver within 30 s"
        assert delivered and delivered[0][0] is None, f"delivery failed: {delivered}"

        message = _consume_one(settings, settings.input_topic)
        assert is_avro_request(message.headers())
        assert decode_request(message.value()) == request
