"""Quick pre-flight probes: say in one line, within seconds, that a service is missing and how to get one.

Without them a client started with no broker retries for its whole delivery timeout (a minute) and librdkafka logs
every reconnect. A TCP connect tells "nothing listens" apart from "something listens"; a metadata request then
tells a Kafka broker (reachable with these TLS/SASL settings) from anything else on that port.
"""

from __future__ import annotations

import socket
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from segpipe.config import KafkaSettings, RedisSettings

__all__ = ["ServiceUnavailable", "check_kafka", "check_redis", "connect_error"]

_START_HINT = "start one with `segpipe up`"


class ServiceUnavailable(RuntimeError):
    """A required service does not answer; the message is one line naming it, why, and what to do."""


def connect_error(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to ``host:port`` fails, in a few words (``None`` when it succeeds)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except socket.gaierror as exc:
        return f"unknown host: {exc.strerror}"
    except OSError as exc:
        return exc.strerror or str(exc)


def _host_port(server: str, default_port: int) -> tuple[str, int]:
    server = server.split("://", 1)[-1]  # SASL_SSL://host:port listener-style entries
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        return server.strip("[]"), default_port
    return host.strip("[]"), int(port)


def check_kafka(settings: KafkaSettings, timeout: float = 5.0) -> None:
    """Raise :class:`ServiceUnavailable` unless a broker of ``KAFKA_BOOTSTRAP_SERVERS`` answers a metadata request
    within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    bootstrap = settings.bootstrap_servers
    servers = [entry.strip() for entry in bootstrap.split(",") if entry.strip()]
    reasons = []
    for server in servers:
        host, port = _host_port(server, 9092)
        reason = connect_error(host, port, max(0.1, min(2.0, deadline - time.monotonic())))
        if reason is None:
            break
        reasons.append(reason)
    else:
        why = reasons[0] if len(set(reasons)) == 1 else "; ".join(reasons)
        raise ServiceUnavailable(
            f"no Kafka broker at {bootstrap} ({why}) — {_START_HINT} or set KAFKA_BOOTSTRAP_SERVERS"
        )
    # log_level 0: this client's own failures are reported once, below, not as librdkafka log lines.
    admin = AdminClient({**settings.client_config(), "log_level": 0})
    try:
        admin.list_topics(timeout=max(0.5, deadline - time.monotonic()))
    except KafkaException as exc:
        raise ServiceUnavailable(
            f"no Kafka broker answers at {bootstrap} ({exc.args[0].str()}): the port is open but metadata did not "
            f"come back — check KAFKA_BOOTSTRAP_SERVERS and KAFKA_SECURITY_PROTOCOL/KAFKA_SASL_* ({_START_HINT} for "
            "a local one)"
        ) from None


def check_redis(settings: RedisSettings, timeout: float = 5.0) -> None:
    """Raise :class:`ServiceUnavailable` unless Redis at ``REDIS_HOST:REDIS_PORT`` answers PING."""
    import redis  # only callers that need Redis pay for the import

    where = f"{settings.host}:{settings.port}"
    reason = connect_error(settings.host, settings.port, min(2.0, timeout))
    if reason is not None:
        raise ServiceUnavailable(
            f"no Redis at {where} ({reason}) — {_START_HINT} or set REDIS_HOST/REDIS_PORT (REDIS_ENABLED=false: no "
            "dedup)"
        )
    client = redis.Redis(
        host=settings.host,
        port=settings.port,
        db=settings.db,
        password=settings.password,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable(
            f"Redis at {where} does not answer PING ({exc}): check REDIS_HOST/REDIS_PORT"
        ) from None
    finally:
        client.close()
