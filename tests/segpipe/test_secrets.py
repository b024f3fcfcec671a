"""Secrets stay secret: settings dumps, reprs, configuration errors and every log line of a real worker and a real
gateway started with known secrets contain none of them, while the clients that need them still get them.

The worker's Redis is a TLS-only redis-server whose only user is an ACL user with a known password, so a worker that
answers at all (and serves a repeat from the cache) has used the password where redis-py takes it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import cv2
import httpx
import numpy as np
import pytest
from gateway_harness import launch_gateway
from pydantic import ValidationError
from redis_tls_harness import TlsRedis, start_tls_redis
from worker_harness import REPO_ROOT, PipelineTopics, launch_worker, worker_environment

from devstack.services import LocalKafka, LocalRedis, create_topics, delete_topics
from gateway.app import GatewaySettings
from segpipe.config import AppSettings, ConfigurationError, KafkaSettings, RedisSettings

RUN = uuid.uuid4().hex[:12]
SECRETS = {
    "KAFKA_SASL_PASSWORD": f"sasl-pw-{RUN}",
    "KAFKA_SSL_KEY_PASSWORD": f"kafka-key-pw-{RUN}",
    "REDIS_PASSWORD": f"redis-pw-{RUN}",
    "REDIS_SSL_KEY_PASSWORD": f"redis-key-pw-{RUN}",
    "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": f"sr-user:sr-secret-{RUN}",
    "GATEWAY_API_KEYS": f"gateway-key-{RUN}",
}
OAUTH_SECRET = f"oauth-client-secret-{RUN}"
URL_PASSWORD = f"url-pw/{RUN}:@"  # characters a URL must escape
REDIS_USER = "segpipe-worker"


def _needles() -> list[str]:
    """Every secret, and the parts of those that hold two (user:secret), as they could appear in text."""
    values = [*SECRETS.values(), OAUTH_SECRET, URL_PASSWORD, quote(URL_PASSWORD, safe="")]
    values.append(SECRETS["SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"].partition(":")[2])
    return values


def _assert_clean(text: str, where: str) -> None:
    leaked = [needle for needle in _needles() if needle in text]
    assert not leaked, f"{where} shows {leaked}"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KAFKA_EXTRA_CONFIG", json.dumps({"sasl.oauthbearer.client.secret": OAUTH_SECRET}))
    monkeypatch.setenv("REDIS_URL", f"rediss://{REDIS_USER}:{quote(URL_PASSWORD, safe='')}@redis.internal:6380/2")


def test_settings_dumps_and_reprs_hide_every_secret(secret_env: None) -> None:
    settings = AppSettings()
    gateway = GatewaySettings()
    for name, group in [
        ("kafka", settings.kafka),
        ("redis", settings.redis),
        ("registry", settings.registry),
        ("gateway", gateway),
    ]:
        for form, text in [
            ("repr", repr(group)),
            ("str", str(group)),
            ("model_dump", str(group.model_dump())),
            ("model_dump(json)", json.dumps(group.model_dump(mode="json"))),
            ("model_dump_json", group.model_dump_json()),
        ]:
            _assert_clean(text, f"{name} {form}")
        assert "**********" in group.model_dump_json(), f"{name}: a secret field is there, masked"
    assert settings.redis.display_url == f"rediss://{REDIS_USER}@redis.internal:6380/2"

    # ...and unwrapped where the client libraries take them.
    kafka = settings.kafka.client_config()
    assert kafka["sasl.password"] == SECRETS["KAFKA_SASL_PASSWORD"]
    assert kafka["ssl.key.password"] == SECRETS["KAFKA_SSL_KEY_PASSWORD"]
    assert kafka["sasl.oauthbearer.client.secret"] == OAUTH_SECRET
    redis_kwargs = settings.redis.client_kwargs()
    assert redis_kwargs["password"] == URL_PASSWORD, "REDIS_URL wins over REDIS_PASSWORD"
    assert redis_kwargs["username"] == REDIS_USER and redis_kwargs["ssl"] is True and redis_kwargs["db"] == 2
    assert redis_kwargs["ssl_password"] == SECRETS["REDIS_SSL_KEY_PASSWORD"]
    assert settings.registry.client_config()["basic.auth.user.info"] == SECRETS["SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"]
    assert gateway.api_keys is not None and gateway.api_keys.get_secret_value() == SECRETS["GATEWAY_API_KEYS"]


def test_configuration_errors_do_not_repeat_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"http://user:{URL_PASSWORD}@host:1")
    with pytest.raises(ConfigurationError) as caught:
        AppSettings()
    assert "REDIS_URL" in str(caught.value)
    _assert_clean(str(caught.value), "ConfigurationError")
    with pytest.raises(ValidationError) as raw:
        RedisSettings()
    _assert_clean(str(raw.value), "pydantic's own message")
    with pytest.raises(ValidationError) as kafka:
        KafkaSettings(sasl_password=SECRETS["KAFKA_SASL_PASSWORD"], message_max_bytes=OAUTH_SECRET)  # type: ignore[arg-type]
    _assert_clean(str(kafka.value), "a Kafka settings error")


@pytest.fixture
def tls_acl_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    server = start_tls_redis(tmp_path / "redis", {REDIS_USER: URL_PASSWORD})
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_a_worker_and_a_gateway_with_known_secrets_never_log_them(
    kafka: LocalKafka,
    redis_server: LocalRedis,
    tls_acl_redis: TlsRedis,
    demo_checkpoints: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = PipelineTopics(f"sec-in-{suffix}", f"sec-out-{suffix}", f"sec-dead-{suffix}", f"sec-{suffix}")
    create_topics(kafka.bootstrap, {topics.input: 1, topics.output: 1, topics.dead_letter: 1})
    env = worker_environment(kafka, redis_server, demo_checkpoints, topics)
    env.update(SECRETS)
    env.update(
        {
            # The Redis the worker must use: TLS only, ACL user only (REDIS_HOST/PORT from the harness are overridden).
            "REDIS_URL": f"rediss://{REDIS_USER}:{quote(URL_PASSWORD, safe='')}@127.0.0.1:{tls_acl_redis.port}/0",
            "REDIS_SSL_CA_CERTS": str(tls_acl_redis.tls.ca),
            "KAFKA_EXTRA_CONFIG": json.dumps({"sasl.oauthbearer.client.secret": OAUTH_SECRET}),
            "LOG_LEVEL": "DEBUG",
        }
    )
    env.pop("REDIS_SSL_KEY_PASSWORD")  # the client key in use here is not encrypted: no password for it
    worker = launch_worker({**env, "WORKER_ID": "secrets-worker"}, tmp_path / "worker.log")
    gateway = launch_gateway({**env, "GATEWAY_INSTANCE_ID": f"secrets-{suffix}"}, tmp_path / "gateway.log")
    try:
        worker.wait_assigned()
        gateway.wait_healthy()
        pixels = (np.random.default_rng(7).random((40, 40, 3)) * 255).astype(np.uint8)
        body = {"image": base64.b64encode(cv2.imencode(".png", pixels)[1].tobytes()).decode()}
        url = f"{gateway.url}/segment"
        wrong = httpx.post(url, json=body, headers={"X-API-Key": f"wrong-{SECRETS['GATEWAY_API_KEYS']}"}, timeout=30)
        assert wrong.status_code == 401
        headers = {"Authorization": f"Bearer {SECRETS['GATEWAY_API_KEYS']}"}
        first = httpx.post(url, json=body, headers=headers, timeout=120)
        assert first.status_code == 200, first.text
        again = httpx.post(url, json=body, headers=headers, timeout=120)
        assert again.status_code == 200 and again.json()["cached"] is True, "served from Redis over TLS as the ACL user"
    finally:
        gateway.stop()
        worker.stop()
        delete_topics(kafka.bootstrap, [topics.input, topics.output, topics.dead_letter])
    for name, text in (("worker", worker.log()), ("gateway", gateway.log())):
        assert len(text.splitlines()) > 10 and " DEBUG " in text, f"{name} logged at DEBUG:\n{text[-2000:]}"
        for number, line in enumerate(text.splitlines(), start=1):
            _assert_clean(line, f"{name} log line {number}")
    assert "Redis unreachable" not in worker.log()


def test_processes_refusing_their_configuration_do_not_print_secrets(tmp_path: Path) -> None:
    """A bad REDIS_URL stops the worker, a plain key pasted into the key file stops the gateway: neither echoes it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "REDIS_URL": f"http://user:{URL_PASSWORD}@host:1"}
    worker = subprocess.run(
        [sys.executable, "-m", "consumers.worker"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert worker.returncode != 0 and "REDIS_URL" in worker.stderr
    _assert_clean(worker.stdout + worker.stderr, "the worker's refusal")

    keys_file = tmp_path / "keys"
    keys_file.write_text(SECRETS["GATEWAY_API_KEYS"] + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GATEWAY_API_KEYS_FILE": str(keys_file)}
    gateway = subprocess.run(
        [sys.executable, "-m", "gateway.app"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert gateway.returncode == 1, gateway.stderr
    assert f"{keys_file}:1: expected 'sha256:" in gateway.stderr
    _assert_clean(gateway.stdout + gateway.stderr, "the gateway's refusal")
