"""Settings for producers, workers and tools: pydantic-settings models read from environment variables.

Kafka fields map onto librdkafka keys (see :meth:`KafkaSettings.client_config`); anything else librdkafka
accepts goes through ``KAFKA_EXTRA_CONFIG`` (a JSON object). The original API's variables (REDIS_HOST, REDIS_PORT,
REDIS_DB, REDIS_TTL, MAX_WORKERS, PORT, ...) keep their names. Bad values fail at start with the variable named.

Passwords and keys are pydantic ``SecretStr``: a settings dump, a ``repr`` or a log line shows ``**********``; the
value is unwrapped only where a client library takes it (:meth:`KafkaSettings.client_config`,
:meth:`RedisSettings.client_kwargs`, :meth:`RegistrySettings.client_config`).
"""

from __future__ import annotations

import json
import os
import re
import socket
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.settings import ModelSettings
from schemas.registry import RegistrySettings

if TYPE_CHECKING:
    import redis


class ConfigurationError(RuntimeError):
    """Configuration that cannot work; the message names the environment variable."""


#: librdkafka keys whose values are credentials (sasl.password, sasl.oauthbearer.client.secret, ssl.key.pem, ...).
_SECRET_KEY = re.compile(r"password|secret|ssl\.key\.pem|\.token|credentials|user\.info", re.IGNORECASE)


def reveal(value: Any) -> Any:
    """A ``SecretStr``'s plain text (for the client library that needs it); anything else as it is."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class KafkaSettings(BaseSettings):
    """Broker, topics, group and security. Environment: KAFKA_<FIELD> (e.g. KAFKA_BOOTSTRAP_SERVERS)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore", frozen=True, hide_input_in_errors=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    input_topic: str = "segpipe.requests"
    output_topic: str = "segpipe.results"
    dead_letter_topic: str = "segpipe.dead-letter"
    group_id: str = "segpipe-workers"
    client_id: str = Field(default_factory=lambda: f"segpipe-{socket.gethostname()}")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, GSSAPI
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None

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

    @field_validator("extra_config")
    @classmethod
    def _hide_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        """librdkafka keys that carry credentials (``sasl.oauthbearer.client.secret``, ``ssl.key.pem``, ...) passed
        through KAFKA_EXTRA_CONFIG are wrapped too, so a dump of the settings never shows them."""
        return {
            key: SecretStr(str(item)) if _SECRET_KEY.search(key) and not isinstance(item, SecretStr) else item
            for key, item in value.items()
        }

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
        # The one place the secrets are unwrapped: librdkafka takes them as plain strings.
        return {key: reveal(value) for key, value in config.items()}

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
    """The dedup cache. REDIS_TTL is how long a stored result serves repeats (seconds).

    Where Redis is: REDIS_URL (``redis://`` or ``rediss://user:password@host:port/db`` for TLS with an ACL user, or
    ``unix:///path?db=0``), which replaces REDIS_HOST/PORT/DB/USERNAME/PASSWORD and REDIS_SSL; or those variables
    one by one. REDIS_SSL_CA_CERTS (and REDIS_SSL_CERTFILE/KEYFILE for client certificates) apply either way.
    """

    model_config = SettingsConfigDict(env_prefix="REDIS_", extra="ignore", frozen=True, hide_input_in_errors=True)

    url: SecretStr | None = Field(None, description="redis[s]://[user:password@]host:port/db; overrides host..ssl")
    host: str = "localhost"
    port: int = Field(6379, ge=1, le=65535)
    db: int = Field(0, ge=0)
    username: str | None = Field(None, description="ACL user (Redis 6+); the password alone logs in as 'default'")
    password: SecretStr | None = None
    ssl: bool = Field(False, description="TLS to Redis (implied by a rediss:// URL)")
    ssl_ca_certs: str | None = Field(None, description="CA bundle that signed the server's certificate")
    ssl_certfile: str | None = Field(None, description="client certificate, when the server asks for one")
    ssl_keyfile: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    ttl: int = Field(86_400, ge=1, description="seconds a stored result is kept")
    enabled: bool = True
    lock_ttl: int = Field(
        30, ge=1, description="seconds an unrefreshed in-flight claim lives: the backstop behind REDIS_LIVENESS_TTL"
    )
    max_wait: float = Field(600.0, gt=0, description="most seconds a repeat waits for a live peer's result")
    answered_ttl: int = Field(
        3600,
        ge=0,
        description="seconds a delivered record is remembered as answered, so that when the group redelivers it "
        "(after a kill -9 or a rebalance, before its offset was committed) it is not published again (0: off)",
    )
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

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and urlsplit(value.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @property
    def display_url(self) -> str:
        """Where Redis is, for logs: the URL without its password."""
        if self.url is None:
            scheme = "rediss" if self.ssl else "redis"
            user = f"{self.username}@" if self.username else ""
            return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"
        parts = urlsplit(self.url.get_secret_value())
        netloc = parts.netloc.rpartition("@")[2]
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``redis.Redis`` (connection, credentials, TLS); the one place secrets are unwrapped."""
        kwargs: dict[str, Any]
        if self.url is not None:
            from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

            kwargs = parse_url(self.url.get_secret_value())
            connection_class = kwargs.pop("connection_class", None)
            if connection_class is UnixDomainSocketConnection:
                kwargs["unix_socket_path"] = kwargs.pop("path")
            kwargs["ssl"] = connection_class is SSLConnection
        else:
            kwargs = {
                "host": self.host,
                "port": self.port,
                "db": self.db,
                "username": self.username,
                "password": reveal(self.password),
                "ssl": self.ssl,
            }
        if kwargs["ssl"]:
            tls = {
                "ssl_ca_certs": self.ssl_ca_certs,
                "ssl_certfile": self.ssl_certfile,
                "ssl_keyfile": self.ssl_keyfile,
                "ssl_password": reveal(self.ssl_key_password),
                "ssl_check_hostname": self.ssl_check_hostname,
                "ssl_cert_reqs": self.ssl_cert_reqs,
            }
            # A URL's own query (?ssl_cert_reqs=none) wins over the variables.
            kwargs = {**{key: value for key, value in tls.items() if value is not None}, **kwargs}
        return kwargs

    def client(self, **options: Any) -> redis.Redis:
        """A ``redis.Redis`` client for these settings; ``options`` adds or overrides keyword arguments."""
        import redis

        return redis.Redis(**{**self.client_kwargs(), **options})


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
        4096,
        ge=1,
        le=100_000,
        description="records a worker holds uncommitted (fetched, being answered, or waiting for the commit): it "
        "pauses its partitions there. Dedup hits are answered in bulk, so this, not MAX_WORKERS, bounds their "
        "throughput (a record counts until its commit is acknowledged: hits/s <= this / the round trip); it is also "
        "the most a kill -9 redelivers",
    )
    max_in_flight_mb: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="MiB of request payloads a worker holds (fetched, result not yet delivered): it pauses its "
        "partitions there too, so a backlog of large images stays bounded in memory. One poll may pass it: it "
        "takes up to 256 records that librdkafka already holds in its own bounded queue",
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


_SECRET_FIELD = re.compile(r"PASSWORD|SECRET|URL|USER_INFO|EXTRA_CONFIG|KEYS", re.IGNORECASE)


def _describe(exc: ValidationError) -> str:
    """Turn pydantic's report into lines that name the environment variables to fix."""
    prefix = {"KafkaSettings": "KAFKA_", "RedisSettings": "REDIS_", "RegistrySettings": "SCHEMA_REGISTRY_"}.get(
        exc.title, ""
    )
    lines = []
    for error in exc.errors():
        field = "_".join(str(part) for part in error["loc"]).upper()
        # The value is repeated to help, except where it may be (or hold) a credential.
        shown = "<hidden>" if _SECRET_FIELD.search(field) else repr(error.get("input"))
        lines.append(f"{prefix}{field}={shown}: {error['msg']}")
    return "invalid configuration: " + "; ".join(lines)
