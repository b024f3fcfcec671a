"""With a Schema Registry configured, requests in and results out use the registry wire format end to end."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import redis
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kafka_harness import collect, noise_png
from worker_harness import PipelineTopics

from consumers.worker import Worker
from devstack.services import LocalKafka
from producers.publisher import SegmentationProducer
from producers.results import follow_results
from schemas import ResultStatus
from schemas.registry import RegistrySettings, WireCodec
from segpipe.config import AppSettings


def test_worker_reads_and_writes_registry_framed_avro(
    kafka: LocalKafka,
    worker_settings: Callable[..., AppSettings],
    redis_client: redis.Redis,
    topic_factory,  # type: ignore[no-untyped-def]
) -> None:
    topics = PipelineTopics(
        *(topic_factory(name, partitions=1) for name in ("requests", "results", "dead")),
        group=f"g-{uuid.uuid4().hex[:8]}",
    )
    registry = RegistrySettings(url=f"mock://{uuid.uuid4().hex}")
    codec = WireCodec(registry)  # one mock registry shared by producer, worker and reader (mock state is per client)
    settings = worker_settings(topics, registry=registry.model_dump())
    worker = Worker(settings, codec=codec)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with SegmentationProducer(settings.kafka, codec=codec) as producer:
            good = producer.publish(noise_png(3, 96, 128))
            bad = producer.publish(b"not an image at all")
        raw = collect(kafka.bootstrap, topics.output, expected=2, timeout=120)
        assert all(value[0] == 0 for value in raw), "results carry the registry's magic byte"
        stock = AvroDeserializer(codec.client)
        records = {
            r["request_id"]: r for r in (stock(v, SerializationContext(topics.output, MessageField.VALUE)) for v in raw)
        }
        assert records[good]["status"] == "ok" and records[good]["model"] == "fastsam"
        assert records[bad]["error"]["code"] == "invalid_image"
        followed = {
            m.request_id: m for m in follow_results(settings.kafka, request_ids={good, bad}, timeout_s=30, codec=codec)
        }
        assert followed[good].status == ResultStatus.OK and followed[good].masks
        dead = collect(kafka.bootstrap, topics.dead_letter, expected=1, timeout=30)
        letter = codec.decode_dead_letter(dead[0], topics.dead_letter)
        assert letter.original_value[0] == 0, "the dead letter keeps the original (registry-framed) record as sent"
        assert codec.decode_request(letter.original_value, topics.input).image == b"not an image at all"
        assert f"{topics.output}-value" in codec.client.get_subjects()
    finally:
        worker.stop()
        thread.join(60)
    assert not thread.is_alive()
