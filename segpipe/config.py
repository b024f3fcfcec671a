"""Settings for producers, workers and tools: pydantic-settings models read from environment variables.

Kafka fields map onto librdkafka keys (see :meth:`KafkaSettings.client_config`); anything else librdkafka
accepts goes through ``KAFKA_EXTRA_CONFIG`` (a JSON object). The original API's variables (REDIS_HOST, REDIS_PORT,
REDIS_DB, REDIS_TTL, MAX_WORKERS, PORT, ...) keep their names. Bad values fail at start with the variable named.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.settings import ModelSettings
from schemas.registry import RegistrySettings


class ConfigurationError(RuntimeError):
    """Configuration that cannot work; the message names the environment variable."""


class KafkaSettings(BaseSettings):
    """Broker, topics, group and security. Environment: KAFKA_<FIELD> (e.g. KAFKA_BOOTSTRAP_SERVERS)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore", frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    input_topic: str = "segpipe.requests"
    output_topic: str = "segpipe.results"
    dead_letter_topic: str = "segpipe.dead-letter"
    group_id: str = "segpipe-workers"
    client_id: str = Field(default_factory=lambda: f"segpipe-{socket.gethostname()}")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, GSSAPI
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = None

    message_max_bytes: int = Field(32 * 1024 * 1024, ge=1000, le=1_000_000_000)
    # zstd measured best for results (bench/wire.py): 44.6 KB vs lz4's 93.7 KB for 40 masks, +0.45 ms CPU.
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "zstd"
    session_timeout_ms: int = Field(45_000, ge=1000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    fetch_wait_max_ms: int = Field(
        100,
        ge=0,
        le=10_000,
        description="longest fetch wait; brokers that do not answer a waiting fetch on new data "
        "(tansu) add up to this much latency per hop",
    )
    extra_config: dict[str, Any] = Field(default_factory=dict, description="JSON: more librdkafka settings")

    @field_validator("extra_config", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings shared by every client."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password,
        }
        config.update({key: value for key, value in optional.items() if value is not None})
        config.update(self.extra_config)
        return config

    def producer_config(self) -> dict[str, Any]:
        """Idempotent, acks=all, sized for images, compressed as measured (see bench/)."""
        return {
            **self.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "message.max.bytes": self.message_max_bytes,
            "compression.type": self.compression_type,
            "linger.ms": 5,
        }

    def consumer_config(self, group_id: str | None = None) -> dict[str, Any]:
        """Offsets are stored by the worker only after the result is delivered (at-least-once)."""
        return {
            **self.client_config(),
            "group.id": group_id or self.group_id,
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": 1000,
            "auto.offset.reset": self.auto_offset_reset,
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            "max.poll.interval.ms": self.max_poll_interval_ms,
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.max.bytes": max(self.message_max_bytes, 52_428_800),
            "max.partition.fetch.bytes": self.message_max_bytes,
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
        }


class RedisSettings(BaseSettings):
    """The dedup cache. REDIS_TTL is how long a stored result serves repeats (seconds)."""

    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="ignore", frozen=True)

    host: str = "localhost"
    port: int = Field(6379, ge=1, le=65535)
    db: int = Field(0, ge=0)
    password: str | None = None
    ttl: int = Field(86_400, ge=1, description="seconds a stored result is kept")
    enabled: bool = True
    lock_ttl: int = Field(
        30, ge=1, description="seconds an unrefreshed in-flight claim lives: the backstop behind REDIS_LIVENESS_TTL"
    )
    max_wait: float = Field(600.0, gt=0, description="most seconds a repeat waits for a live peer's result")
    socket_timeout: float = Field(2.0, gt=0)
    liveness_ttl: float = Field(
        5.0,
        gt=0,
        description="seconds a worker's liveness key outlives its last heartbeat: a claim whose owner's key is gone "
        "is taken over at once (a killed worker's claims wait this long, not REDIS_LOCK_TTL)",
    )
    heartbeat_interval: float = Field(1.0, gt=0, description="seconds between liveness heartbeats (< liveness_ttl)")
    breaker_failures: int = Field(
        3, ge=1, description="consecutive Redis timeouts or connection errors that open the circuit breaker"
    )
    breaker_cooldown: float = Field(
        2.0, gt=0, description="seconds the open breaker skips Redis (no dedup) between background probes"
    )

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


class WorkerSettings(BaseSettings):
    """How a worker runs: images in flight, micro-batching, identity and the HTTP port."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    max_workers: int = Field(
        8,
        ge=1,
        le=1024,
        description="images on the model path per worker (decoding, queued for or in the model); also the decode "
        "threads. >= 2 x BATCH_SIZE lets the next batch decode while the current one runs",
    )
    max_in_flight: int = Field(
        256,
        ge=1,
        le=100_000,
        description="records a worker holds uncommitted (fetched, being answered, or waiting for the commit): it "
        "pauses its partitions there. Dedup hits are answered in bulk, so this, not MAX_WORKERS, bounds their "
        "throughput; it is also the most a kill -9 redelivers and the worker's buffer (x the largest request)",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=256,
        description="micro-batch: most images per model call; unset: 1 on a CPU (batches of 2-8 measured 0-13 % "
        "slower per image there than single images) and 4 on a GPU",
    )
    batch_timeout_ms: int = Field(20, ge=0, le=10_000, description="micro-batch: longest wait to fill a batch")
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    port: int = Field(5000, ge=1, le=65535, description="HTTP port of the gateway (the original API's PORT)")
    metrics_port: int = Field(9100, ge=0, le=65535, description="worker's /metrics and /health port; 0 disables")
    shutdown_timeout_s: float = Field(30.0, gt=0)


class AppSettings:
    """Every settings group, read once; a bad variable raises :class:`ConfigurationError` naming it."""

    def __init__(self, **overrides: dict[str, Any]) -> None:
        try:
            self.kafka = KafkaSettings(**overrides.get("kafka", {}))
            self.redis = RedisSettings(**overrides.get("redis", {}))
            self.worker = WorkerSettings(**overrides.get("worker", {}))
            self.models = ModelSettings(**overrides.get("models", {}))
            self.registry = RegistrySettings(**overrides.get("registry", {}))
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"KAFKA_EXTRA_CONFIG is not a JSON object: {exc}") from None


def _describe(exc: ValidationError) -> str:
    """Turn pydantic's report into lines that name the environment variables to fix."""
    prefix = {"KafkaSettings": "KAFKA_", "RedisSettings": "REDIS_", "RegistrySettings": "SCHEMA_REGISTRY_"}.get(
        exc.title, ""
    )
    lines = []
    for error in exc.errors():
        field = "_".join(str(part) for part in error["loc"]).upper()
        lines.append(f"{prefix}{field}={error.get('input')!r}: {error['msg']}")
    return "invalid configuration: " + "; ".join(lines)
