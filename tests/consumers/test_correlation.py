"""Any client can match results to requests: a real worker, real broker, real Redis, real tiny models.

Request id = the ``segpipe-request-id`` header, else the record's Kafka key when it is UTF-8 (<= 256 bytes), else
``topic:partition:offset``; the header wins even when the body cannot be read. Every result carries the request's
key and position, its Kafka key is the request id, and the unhelpful messages of the past say what is wrong.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Callable

import pytest
import redis
from confluent_kafka import Consumer
from kafka_harness import collect, noise_png, produce_all
from worker_harness import PipelineTopics, WorkerProcess

from devstack.services import FAST_GROUP_CONFIG, LocalKafka
from pipeline.types import SegmentParams
from schemas import FORMAT_AVRO, FORMAT_HEADER, SegmentRequest, decode_dead_letter, decode_result, encode_request

pytestmark = pytest.mark.slow


def _results_by_key(bootstrap: str, topic: str, expected: int, timeout: float = 180.0) -> dict[bytes, object]:
    """Result records by their Kafka key (decoded values), read from the beginning."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
        | FAST_GROUP_CONFIG
    )
    consumer.subscribe([topic])
    found: dict[bytes, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            found[message.key()] = decode_result(message.value())
    finally:
        consumer.close()
    return found


def test_results_are_keyed_and_tagged_for_any_client(
    kafka: LocalKafka,
    redis_client: redis.Redis,
    pipeline_topics: PipelineTopics,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    worker = start_worker()
    worker.wait_assigned()
    png = noise_png(7, 64, 80)
    avro = encode_request(SegmentRequest(request_id="in-body", image=png, params=SegmentParams(model="fastsam")))
    registry_framed = b"\x00" + struct.pack(">I", 17) + avro
    records = [
        # kcat with only a key: the key names the request
        (b"order-17", png, []),
        # a key that is not UTF-8 and no header: the record's position names it
        (b"\xff\xfe\xfd", png, []),
        # the header wins over the key, even when the Avro body is unreadable
        (b"some-key", b"\x02\xff\xff\xff garbage", [(FORMAT_HEADER, FORMAT_AVRO), ("segpipe-request-id", b"hdr-1")]),
        # an Avro request sent without its format header
        (b"no-format", avro, []),
        # a Schema-Registry-framed request to a worker without a registry
        (b"framed", registry_framed, [(FORMAT_HEADER, FORMAT_AVRO)]),
    ]
    produce_all(kafka.bootstrap, pipeline_topics.input, records)
    results = _results_by_key(kafka.bootstrap, pipeline_topics.output, expected=len(records))
    assert len(results) == len(records), sorted(results)

    keyed = results[b"order-17"]
    assert keyed.request_id == "order-17" and keyed.status == "ok"  # type: ignore[attr-defined]
    assert keyed.origin.key == b"order-17" and keyed.origin.topic == pipeline_topics.input  # type: ignore[attr-defined]
    assert keyed.origin.offset >= 0  # type: ignore[attr-defined]

    (positional_key,) = [k for k in results if k.count(b":") == 2 and k.startswith(pipeline_topics.input.encode())]
    positional = results[positional_key]
    assert positional.origin.key == b"\xff\xfe\xfd"  # type: ignore[attr-defined]
    origin = positional.origin  # type: ignore[attr-defined]
    assert positional_key.decode() == f"{origin.topic}:{origin.partition}:{origin.offset}"

    unreadable = results[b"hdr-1"]
    assert unreadable.error.code == "malformed_request"  # type: ignore[attr-defined]
    assert unreadable.origin.key == b"some-key"  # type: ignore[attr-defined]

    no_format = results[b"no-format"]
    assert no_format.error.code == "malformed_request"  # type: ignore[attr-defined]
    assert "no segpipe-format: avro-v1 header" in no_format.error.message  # type: ignore[attr-defined]

    framed = results[b"framed"]
    assert "looks like Schema Registry framing (magic byte 0" in framed.error.message  # type: ignore[attr-defined]
    assert "set SCHEMA_REGISTRY_URL" in framed.error.message  # type: ignore[attr-defined]

    letters = {
        letter.request_id: letter
        for letter in map(decode_dead_letter, collect(kafka.bootstrap, pipeline_topics.dead_letter, expected=3))
    }
    assert set(letters) == {"hdr-1", "no-format", "framed"}
    assert letters["hdr-1"].original_value == b"\x02\xff\xff\xff garbage"
    assert letters["no-format"].original_value == avro and letters["no-format"].original_key == b"no-format"
    assert letters["framed"].original_value == registry_framed
    assert worker.stop() == 0
