"""The one place that talks to confluent-kafka: client construction, topic setup, header helpers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from segpipe.config import KafkaSettings

log = logging.getLogger(__name__)
# librdkafka's own log lines (e.g. "%3|FAIL|...") go through Python logging instead of straight to stderr, so the
# handlers' filters (segpipe.logs rate-limits repeated warnings) and LOG_FORMAT apply to them too.
client_log = logging.getLogger("segpipe.kafka.librdkafka")

Headers = list[tuple[str, bytes | None]]


def make_producer(settings: KafkaSettings, **overrides: Any) -> Producer:
    """An idempotent producer (acks=all) sized for images."""
    return Producer({**settings.producer_config(), "error_cb": _log_client_error, "logger": client_log, **overrides})


def make_consumer(settings: KafkaSettings, group_id: str | None = None, **overrides: Any) -> Consumer:
    """A group member that stores offsets only when told (enable.auto.offset.store=False)."""
    config = {**settings.consumer_config(group_id), "error_cb": _log_client_error, "logger": client_log}
    return Consumer({**config, **overrides})


def resume_now(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    """Resume fetching ``partitions`` without librdkafka's idle delay.

    librdkafka applies a resume on its main thread but does not wake the broker thread that fetches, which notices
    only at its next wake-up: 0.8-0.95 s measured here (the same ~0.5 s shows in debug logs against Apache Kafka,
    confluent-kafka-go#630). A paused worker then idles for that long however fast it drains. Any request on the
    broker connection wakes it: a metadata request for the topics is the cheapest (10-14 ms to the first record).
    Enqueuing the request is what wakes the thread, so the answer is not waited for (1 ms timeout): on tansu it can
    queue behind a fetch the broker holds for up to ``fetch.wait.max.ms``, and the poll loop must not stall.
    """
    consumer.resume(partitions)
    for topic in sorted({tp.topic for tp in partitions}):
        try:
            consumer.list_topics(topic, timeout=0.001)
        except KafkaException as exc:  # expected: timed out waiting for an answer nobody needs
            log.debug("metadata nudge after resume: %s", exc)


def make_admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient({**settings.client_config(), "logger": client_log})


def ensure_topics(
    settings: KafkaSettings,
    topics: dict[str, int],
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
    config: Mapping[str, str] | None = None,
) -> None:
    """Create missing topics (name -> partitions) and wait until the broker's metadata shows them.

    ``config`` (topic settings such as ``retention.ms``) applies to the topics created here; existing topics are
    left as they are.
    """
    admin = make_admin(settings)
    existing = admin.list_topics(timeout=10).topics
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=replication_factor, config=dict(config or {}))
        for name, partitions in topics.items()
        if name not in existing
    ]
    if missing:
        for name, future in admin.create_topics(missing, request_timeout=timeout).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            log.info("created topic %s", name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=5).topics
        if all(name in metadata and len(metadata[name].partitions) >= n for name, n in topics.items()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics {sorted(topics)} not visible after {timeout}s")


def header_value(headers: Iterable[tuple[str, bytes | None]] | None, key: str) -> bytes | None:
    """Last value of a header (Kafka headers may repeat; the last one wins)."""
    found = None
    for name, value in headers or ():
        if name == key:
            found = value
    return found


def _log_client_error(error: KafkaError) -> None:
    """librdkafka reports transport trouble here; it reconnects by itself, so log rather than raise."""
    if error.fatal():
        log.critical("fatal Kafka client error: %s", error)
    elif error.code() == KafkaError._TRANSPORT:
        # The same failure librdkafka's own FAIL line (segpipe.kafka.librdkafka) already reports: once is enough.
        log.debug("Kafka client error: %s", error)
    else:
        log.warning("Kafka client error: %s", error)
