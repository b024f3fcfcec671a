"""With a Schema Registry configured, requests in and results out use the registry wire format end to end."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import redis
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from kafka_harness import collect, noise_png

from consumers.results import follow_results
from consumers.worker import Worker
from producers.publisher import SegmentationProducer
from schemas import ResultStatus
from schemas.registry import RegistrySettings, WireCodec
from segpipe.config import AppSettings
from segpipe.services import FAST_GROUP_CONFIG, LocalKafka, LocalRedis


def test_worker_reads_and_writes_registry_framed_avro(
    kafka: LocalKafka,
    redis_server: LocalRedis,
    redis_client: redis.Redis,
    demo_checkpoints: tuple[Path, Path],
    topic_factory,  # type: ignore[no-untyped-def]
) -> None:
    fastsam, sam2 = demo_checkpoints
    topics = {name: topic_factory(name, partitions=1) for name in ("requests", "results", "dead")}
    registry = RegistrySettings(url=f"mock://{uuid.uuid4().hex}")
    codec = WireCodec(registry)  # one mock registry shared by producer, worker and reader (mock state is per client)
    settings = AppSettings(
        kafka={
            "bootstrap_servers": kafka.bootstrap,
            "input_topic": topics["requests"],
            "output_topic": topics["results"],
            "dead_letter_topic": topics["dead"],
            "group_id": f"g-{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": FAST_GROUP_CONFIG["session.timeout.ms"],
            "heartbeat_interval_ms": FAST_GROUP_CONFIG["heartbeat.interval.ms"],
        },
        redis={"host": redis_server.host, "port": redis_server.port},
        models={
            "fastsam_model_path": fastsam,
            "sam_model_path": sam2,
            "device": "cpu",
            "default_conf": 0.005,
            "fastsam_imgsz": 640,
        },
        registry=registry.model_dump(),
    )
    worker = Worker(settings, codec=codec)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with SegmentationProducer(settings.kafka, codec=codec) as producer:
            good = producer.publish(noise_png(3, 96, 128))
            bad = producer.publish(b"not an image at all")
        raw = collect(kafka.bootstrap, topics["results"], expected=2, timeout=120)
        assert all(value[0] == 0 for value in raw), "results carry the registry's magic byte"
        stock = AvroDeserializer(codec.client)
        records = {
            r["request_id"]: r
            for r in (stock(v, SerializationContext(topics["results"], MessageField.VALUE)) for v in raw)
        }
        assert records[good]["status"] == "ok" and records[good]["model"] == "fastsam"
        assert records[bad]["error"]["code"] == "invalid_image"
        followed = {
            m.request_id: m for m in follow_results(settings.kafka, request_ids={good, bad}, timeout_s=30, codec=codec)
        }
        assert followed[good].status == ResultStatus.OK and followed[good].masks
        dead = collect(kafka.bootstrap, topics["dead"], expected=1, timeout=30)
        letter = codec.decode_dead_letter(dead[0], topics["dead"])
        assert letter.original_value[0] == 0, "the dead letter keeps the original (registry-framed) record as sent"
        assert codec.decode_request(letter.original_value, topics["requests"]).image == b"not an image at all"
        assert f"{topics['results']}-value" in codec.client.get_subjects()
    finally:
        worker.stop()
        thread.join(60)
    assert not thread.is_alive()
