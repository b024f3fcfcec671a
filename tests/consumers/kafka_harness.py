"""Helpers for end-to-end tests: produce, collect, read committed offsets (imported by test modules)."""

from __future__ import annotations

import time
import uuid

import cv2
import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from devstack.services import FAST_GROUP_CONFIG
from schemas import SegmentResultMessage, decode_result


def noise_png(seed: int, height: int, width: int) -> bytes:
    """A PNG of seeded noise: distinct seeds give distinct images, equal seeds equal bytes."""
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


def produce_all(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes, list]]) -> dict[int, int]:
    """Produce (key, value, headers) records; returns partition -> next offset, from the delivery reports."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 20_000_000, "enable.idempotence": True})
    ends: dict[int, int] = {}
    errors: list[str] = []

    def delivered(error, message) -> None:  # type: ignore[no-untyped-def]
        if error is not None:
            errors.append(str(error))
        else:
            ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)

    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
    producer.flush(30)
    assert not errors, errors
    return ends


def collect(bootstrap: str, topic: str, expected: int, timeout: float = 180.0) -> list[bytes]:
    """Read ``expected`` values from a topic (fresh group, from the beginning), or fail after ``timeout``."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
        | FAST_GROUP_CONFIG
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            values.append(message.value())
    finally:
        consumer.close()
    return values


def collect_results(bootstrap: str, topic: str, expected: int, timeout: float = 180.0) -> list[SegmentResultMessage]:
    return [decode_result(value) for value in collect(bootstrap, topic, expected, timeout)]


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets, read without joining the group."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found}
