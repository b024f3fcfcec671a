"""The launched services behave like real Kafka and Redis for what the pipeline relies on."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from devstack.services import (
    FAST_GROUP_CONFIG,
    LocalKafka,
    LocalRedis,
    create_topics,
    delete_topics,
    docker_available,
    local_kafka,
    local_redis,
)


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST_GROUP_CONFIG,
        }
    )


def _produce(bootstrap: str, topic: str, records: list[dict]) -> None:
    """Produce with acks=all and fail the test on any delivery error."""
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for r in records:
        producer.produce(topic, on_delivery=on_delivery, **r)
    assert producer.flush(10) == 0, "messages still in flight after 10 s"
    assert not errors


def _poll_until(consumers: list[Consumer], done: Callable[[], bool], timeout: float, sink: list | None = None) -> None:
    """Poll every consumer in turn (each must keep polling to take part in a rebalance) until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"condition not reached within {timeout} s"
        for c in consumers:
            msg = c.poll(0.1)
            if msg is not None:
                assert msg.error() is None, msg.error()
                if sink is not None:
                    sink.append((c, msg))


def test_produce_consume_keys_headers_and_manual_commit(kafka: LocalKafka, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory("svc-roundtrip", partitions=1)
    records = [
        {"key": f"k{i}".encode(), "value": f"v{i}".encode(), "headers": [("trace", f"t{i}".encode()), ("n", b"x")]}
        for i in range(5)
    ]
    _produce(kafka.bootstrap, topic, records)

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = _consumer(kafka.bootstrap, group)
    got: list = []
    try:
        consumer.subscribe([topic])
        _poll_until([consumer], lambda: len(got) == 5, timeout=20, sink=got)
        msgs = [m for _, m in got]
        assert [(m.key(), m.value()) for m in msgs] == [(r["key"], r["value"]) for r in records]
        assert [m.headers() for m in msgs] == [r["headers"] for r in records]
        assert [m.offset() for m in msgs] == list(range(5))

        consumer.commit(message=msgs[-1], asynchronous=False)
        (committed,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        assert committed.error is None and committed.offset == 5
    finally:
        consumer.close()

    # The commit lives on the broker: a fresh member of the group (no subscription, no join) reads it back.
    fresh = _consumer(kafka.bootstrap, group)
    try:
        (committed,) = fresh.committed([TopicPartition(topic, 0)], timeout=10)
        assert committed.offset == 5
    finally:
        fresh.close()


def test_two_consumers_in_one_group_split_partitions(kafka: LocalKafka, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory("svc-split", partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    c1, c2 = _consumer(kafka.bootstrap, group), _consumer(kafka.bootstrap, group)
    try:
        c1.subscribe([topic])
        c2.subscribe([topic])

        def parts(c: Consumer) -> set[int]:
            return {tp.partition for tp in c.assignment()}

        def split() -> bool:
            p1, p2 = parts(c1), parts(c2)
            return bool(p1) and bool(p2) and not p1 & p2 and p1 | p2 == {0, 1, 2, 3}

        _poll_until([c1, c2], split, timeout=30)

        # With the assignment settled, each member receives exactly its own partitions' records.
        _produce(
            kafka.bootstrap, topic, [{"value": f"{p}-{i}".encode(), "partition": p} for p in range(4) for i in range(2)]
        )
        got: list = []
        _poll_until([c1, c2], lambda: len(got) == 8, timeout=20, sink=got)
        assert sorted(m.value() for _, m in got) == sorted(f"{p}-{i}".encode() for p in range(4) for i in range(2))
        for c, m in got:
            assert m.partition() in parts(c)
    finally:
        c1.close()
        c2.close()


def test_create_topics_is_idempotent_and_delete_removes(kafka: LocalKafka) -> None:
    name = f"svc-idem-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    try:
        create_topics(kafka.bootstrap, {name: 3})
        create_topics(kafka.bootstrap, {name: 3})
        assert len(admin.list_topics(timeout=5).topics[name].partitions) == 3

        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="other partition counts"):
            create_topics(kafka.bootstrap, {name: 5})
        assert time.monotonic() - t0 < 5, "a partition-count clash must fail fast, not wait for the timeout"
    finally:
        delete_topics(kafka.bootstrap, [name])
    assert name not in admin.list_topics(timeout=5).topics
    delete_topics(kafka.bootstrap, [name])  # already gone: no error


def test_redis_set_ttl_get_expire(redis_client: redis.Redis) -> None:
    assert redis_client.set("job:1", b"pending", ex=30)
    assert redis_client.get("job:1") == b"pending"
    assert 0 < redis_client.ttl("job:1") <= 30

    assert redis_client.expire("job:1", 1)
    assert 0 < redis_client.ttl("job:1") <= 1
    assert redis_client.pexpire("job:1", 50)
    time.sleep(0.2)
    assert redis_client.get("job:1") is None  # the real server expired it

    assert redis_client.set("job:2", b"a", nx=True)
    assert redis_client.set("job:2", b"b", nx=True) is None  # SET NX: the first writer wins
    assert redis_client.ttl("job:2") == -1


def test_redis_restart_loses_data_and_client_reconnects(redis_server: LocalRedis, tmp_path: Path) -> None:
    # An instance of its own: restarting the session server would empty it under other tests.
    with local_redis(workdir=tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        try:
            client.set("k", b"v")
            server.restart()
            assert client.get("k") is None  # no RDB/AOF: nothing survives; the pool reconnected by itself
            client.set("k", b"w")
            assert client.get("k") == b"w"
            assert not list(tmp_path.glob("*.rdb")) and not list(tmp_path.glob("*.aof"))
        finally:
            client.close()


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_kafka_restart_forgets_topics_and_stop_closes_port(tmp_path: Path) -> None:
    with local_kafka(log_dir=tmp_path) as broker:
        create_topics(broker.bootstrap, {"before-restart": 1})
        t0 = time.monotonic()
        broker.restart()
        assert time.monotonic() - t0 < 3
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        assert "before-restart" not in admin.list_topics(timeout=5).topics  # memory storage starts empty
        del admin

        broker.stop()
        assert broker.process.returncode is not None
        assert _refused(broker.port)
        broker.stop()  # idempotent
    assert "listening on" in broker.log_path.read_text()


def test_docker_available_never_raises() -> None:
    ok, reason = docker_available()
    assert isinstance(ok, bool) and reason
