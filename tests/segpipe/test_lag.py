"""``segpipe lag`` and the workers' lag gauge against the real local broker, on a backlog of known size.

tansu answers ListOffsets(latest) wrongly when a record batch holds several records (INFRA.md), so the backlog
for the group-lag checks is produced one record per batch (a flush after each record): there the end offset is
the record count. The workers' gauge (librdkafka's consumer_lag) reads the high watermark of fetch responses,
which tansu gets right, so it is also checked on records sent in one batch.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from consumers.lag import LagCollector, LagTracker
from consumers.metrics import WorkerMetrics
from devstack.services import FAST_GROUP_CONFIG, LocalKafka
from segpipe import lag as lag_cli
from segpipe.config import KafkaSettings
from segpipe.lag import group_lag


def _produce_one_per_batch(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, count in counts.items():
        for i in range(count):
            producer.produce(topic, f"{partition}-{i}".encode(), partition=partition)
            assert producer.flush(10) == 0  # one record per batch: tansu's end offsets stay right
    assert producer.flush(10) == 0


def _commit(bootstrap: str, group: str, offsets: list[TopicPartition]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **FAST_GROUP_CONFIG})
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def test_group_lag_per_partition_on_a_known_backlog(
    kafka: LocalKafka,
    topic_factory,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    topic = topic_factory("lag", partitions=3)
    group = f"lag-{uuid.uuid4().hex[:8]}"
    _produce_one_per_batch(kafka.bootstrap, topic, {0: 5, 1: 3, 2: 0})
    _commit(kafka.bootstrap, group, [TopicPartition(topic, 0, 2)])  # the group acknowledged 2 of partition 0's 5
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, input_topic=topic, group_id=group)

    report = group_lag(settings)
    rows = {row.partition: (row.committed, row.end, row.lag) for row in report.partitions}
    assert rows == {0: (2, 5, 3), 1: (None, 3, 3), 2: (None, 0, 0)}
    assert report.total == 6

    assert lag_cli.main(["--bootstrap-servers", kafka.bootstrap, "--topic", topic, "--group", group]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"group {group} on {topic} (") and out[0].endswith("lag 6")
    table = [line.split() for line in out[2:5]]
    assert table == [["0", "2", "5", "3"], ["1", "-", "3", "3"], ["2", "-", "0", "0"]]
    assert out[5].startswith("members"), out

    assert lag_cli.main(["--bootstrap-servers", kafka.bootstrap, "--topic", topic, "--group", group, "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["total"] == 6 and [p["lag"] for p in as_json["partitions"]] == [3, 3, 0]


def test_lag_command_fails_in_one_line_without_broker_or_topic(
    kafka: LocalKafka, capsys: pytest.CaptureFixture[str]
) -> None:
    from devstack.services import free_port

    assert lag_cli.main(["--bootstrap-servers", f"127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no Kafka broker at 127.0.0.1:" in err and "(connection refused)" in err and "segpipe up" in err
    assert "\n" not in err
    assert lag_cli.main(["--bootstrap-servers", kafka.bootstrap, "--topic", "no-such-topic-here"]) == 1
    assert "does not exist" in capsys.readouterr().err


@dataclass
class _Member:
    """What :class:`LagCollector` reads of a worker: the partitions it holds."""

    assigned: frozenset[tuple[str, int]]


def test_worker_gauge_counts_records_after_the_commit(kafka: LocalKafka, topic_factory) -> None:  # type: ignore[no-untyped-def]
    topic = topic_factory("gauge", partitions=3)
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 200})
    for i in range(10):  # one batch of 10 on partition 0: the case tansu's ListOffsets gets wrong
        producer.produce(topic, str(i).encode(), partition=0)
    assert producer.flush(10) == 0
    _produce_one_per_batch(kafka.bootstrap, topic, {1: 3, 2: 2})

    tracker = LagTracker(interval_ms=200)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": f"gauge-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
            **tracker.consumer_config(),
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    try:
        taken = 0
        while taken < 4:  # take and commit 4 of partition 0's records
            record = consumer.poll(10)
            assert record is not None and record.error() is None
            if record.partition() == 0:
                taken += 1
                consumer.commit(record, asynchronous=False)
        consumer.pause([TopicPartition(topic, p) for p in range(3)])  # a paused worker keeps its last watermarks
        expected = {(topic, 0): 6, (topic, 1): 3, (topic, 2): 2}  # nothing committed on 1 and 2: all of it
        deadline = time.monotonic() + 15
        while tracker.snapshot() != expected and time.monotonic() < deadline:
            consumer.poll(0.1)  # statistics are served by poll, like every callback
        assert tracker.snapshot() == expected

        metrics = WorkerMetrics()
        member = _Member(frozenset({(topic, 0), (topic, 1)}))  # partition 2 is not this worker's
        metrics.registry.register(LagCollector(tracker, member))  # type: ignore[arg-type]  # reads .assigned
        samples = {
            tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples
            if s.name == "segpipe_consumer_lag"
        }
        assert samples == {(("partition", "0"), ("topic", topic)): 6, (("partition", "1"), ("topic", topic)): 3}
    finally:
        consumer.close()
